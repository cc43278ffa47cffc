"""Sphinx directives that render reference tables from the code, so those pages cannot drift.

``config-table``: every ``EmitterConfig`` field (scripts/config_table.py); a field without
a comment to explain it fails the build. ``metrics-table``: every metric the collector
exports (``:process:`` for the process collector's), from scripts/metrics_table.py.
"""

from __future__ import annotations

from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective


class _Generated(SphinxDirective):
    def markdown(self) -> str:
        raise NotImplementedError

    def run(self) -> list[nodes.Node]:
        container = nodes.container(classes=["generated-reference"])
        self.state.nested_parse(StringList(self.markdown().splitlines(), source="(generated)"),
                                self.content_offset, container)
        return [container]


class ConfigTable(_Generated):
    def markdown(self) -> str:
        from scripts import config_table

        unexplained = [row.keyword for row in config_table.rows() if not row.meaning]
        if unexplained:
            raise self.error(f"EmitterConfig fields without a comment in actors/config.py: {unexplained}")
        return config_table.render()


class MetricsTable(_Generated):
    option_spec = {"process": lambda argument: True}

    def markdown(self) -> str:
        from scripts import metrics_table

        families = metrics_table.process_families() if "process" in self.options else metrics_table.emitter_families()
        undocumented = [family.name for family in families if not family.documentation]
        if undocumented:
            raise self.error(f"metrics without help text: {undocumented}")
        return metrics_table.render(families)


def _public_name(app: Sphinx, env: Any, node: Any, contnode: Any) -> Any:
    """Docstrings name public things the way their readers do (``SchemaError``,
    ``Emitter.statistics``): resolve such a name as ``actors.<name>``, the face they come from."""
    import actors

    target = node.get("reftarget", "")
    if node.get("refdomain") != "py" or target.split(".")[0] not in actors.__all__:
        return None
    domain = env.get_domain("py")
    return domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], f"actors.{target}", node, contnode)


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("missing-reference", _public_name)
    app.add_directive("config-table", ConfigTable)
    app.add_directive("metrics-table", MetricsTable)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
