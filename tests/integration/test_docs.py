"""The documentation site: it builds with warnings as errors, its generated pages match the code,
every alert's runbook_url resolves in it, and its Python blocks run against a real Postgres and chipmock.
"""

import html
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from actors import open_emitter
from actors.config_env import ENV_NAMES
from scripts import config_table, metrics_table

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md")) + [ROOT / "README.md"]
RUNBOOK_BASE = "https://durable-emitter.readthedocs.io/en/latest/"
NOT_RUN = re.compile(r"^% not run: (.*)$")

pytestmark = pytest.mark.skipif(not DOCS.is_dir(), reason="docs/ is not beside the tests")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site as `just docs` builds it: warnings are errors (-W), nitpicky (-n), every problem listed."""
    out = tmp_path_factory.mktemp("site")
    built = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-q", "-b", "html",
                            str(DOCS), str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-6000:]
    return out


def _text(page: Path) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", page.read_text())).split())


def test_the_site_builds_with_warnings_as_errors(site: Path) -> None:
    built = {page.stem for page in site.glob("*.html")}
    assert {page.stem for page in DOCS.glob("*.md")} <= built


def test_the_configuration_page_has_every_knob_as_the_code_defines_it(site: Path) -> None:
    page = _text(site / "configuration.html")
    for row in config_table.rows():
        assert row.keyword in page and row.variable in page, f"{row.keyword} is missing from configuration.html"
        meaning = " ".join(row.meaning.replace("`", "").replace("|", "/").split())
        assert meaning in page, f"{row.keyword}: its comment is not on the page"


def test_each_documented_bound_is_one_the_configuration_enforces() -> None:
    for field, rule in config_table.RULES.items():
        assert not config_table._accepts(**rule.refused), f"{field}: '{rule.text}' is not enforced"
        assert config_table._accepts(**rule.accepted), f"{field}: the example that keeps '{rule.text}' is refused"


async def test_the_metrics_page_has_every_metric_a_running_emitter_exports(site: Path, chip, make_config) -> None:
    async with open_emitter(make_config(chip)) as emitter:
        await emitter.emit(b"x", source="docs", type="t")
        await emitter.flush(timeout=30)
        exported = {family.name: family.documentation for family in emitter.registry.collect()}
    page = _text(site / "metrics.html")
    documented = {row.name for row in metrics_table.rows(metrics_table.emitter_families()
                                                         + metrics_table.process_families())}
    for name, help_text in exported.items():
        assert any(row.startswith(name) for row in documented), f"{name} is exported but not generated"
        assert name in page and help_text in page, f"{name} or its help text is missing from metrics.html"


def test_the_pages_name_only_metrics_and_variables_that_exist() -> None:
    families = metrics_table.emitter_families() + metrics_table.process_families()
    metrics = {family.name for family in families} | {row.name for row in metrics_table.rows(families)}
    variables = {config_table.variable(f) for f in config_table.dataclasses.fields(config_table.EmitterConfig)}
    assert set(ENV_NAMES.values()) <= variables
    for page in PAGES:
        text = page.read_text()
        for name in re.findall(r"\bdurable_emitter_[a-z_]+", text):
            bare = re.sub(r"_(bucket|sum|count)$", "", name)
            if bare.startswith(("durable_emitter_events", "durable_emitter_dead_letter")):  # table names, not metrics
                continue
            assert name in metrics or bare in metrics, f"{page.name} names {name}, which nothing exports"
        for name in re.findall(r"\bDURABLE_EMITTER_[A-Z_]*[A-Z]", text):
            assert name in variables, f"{page.name} names {name}, which no knob reads"


def _rules() -> list[dict]:
    alerts = yaml.safe_load((ROOT / "deploy" / "alerts.yml").read_text())
    return [rule for group in alerts["groups"] for rule in group["rules"]]


def test_every_alert_has_a_runbook_url_whose_section_is_in_the_built_runbook(site: Path) -> None:
    ids = set(re.findall(r'\bid="([^"]+)"', (site / "runbook.html").read_text()))
    for rule in _rules():
        url = rule["annotations"].get("runbook_url", "")
        assert url.startswith(RUNBOOK_BASE), f"{rule['alert']}: runbook_url {url!r} is not under {RUNBOOK_BASE}"
        where = urlsplit(url)
        assert where.path.endswith("/runbook.html") and where.fragment in ids, (
            f"{rule['alert']}: {url} points at no section of the runbook")
        assert where.fragment == rule["alert"].lower()


def _python_blocks() -> list[tuple[str, str, str | None]]:
    """(page:line, code, why it is not run) for every ```python block of the pages."""
    blocks = []
    for page in PAGES:
        lines = page.read_text().splitlines()
        for number, line in enumerate(lines):
            if line.strip() != "```python":
                continue
            end = lines.index("```", number + 1)
            mark = NOT_RUN.match(lines[number - 1]) if number else None
            blocks.append((f"{page.name}:{number + 1}", "\n".join(lines[number + 1:end]),
                           mark.group(1).strip() if mark else None))
    return blocks


def test_a_block_that_is_not_run_says_why() -> None:
    for where, _, why in _python_blocks():
        assert why is None or len(why) > 10, f"{where}: say why it is not run"
    assert any(why is None for _, _, why in _python_blocks())


@pytest.mark.parametrize(("where", "code"), [(where, code) for where, code, why in _python_blocks() if why is None],
                         ids=[where for where, _, why in _python_blocks() if why is None])
def test_the_python_blocks_run(where: str, code: str, database_url: str, chip, tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": database_url, "CHIP_INGRESS_ENDPOINT": chip.endpoint}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                          cwd=tmp_path)
    assert done.returncode == 0, f"{where}:\n{done.stderr[-3000:]}"
