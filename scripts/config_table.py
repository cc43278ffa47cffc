"""The configuration reference, generated from ``EmitterConfig`` (the docs' configuration page shows it).

Each row is one field: its keyword, its environment variable, its default, its unit, what
is accepted (the type, and the bounds ``EmitterConfig`` enforces, found by asking it), and
the comment written above it (or beside it) in ``actors/config.py``. The docs build
renders it (docs/_ext/reference.py), so the page cannot drift from the code;
``python -m scripts.config_table`` prints it as Markdown.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actors import config as config_module
from actors.config import ENV_NAMES, ENV_PREFIX, EmitterConfig
from actors.config_env import _FALSE, _TRUE, _UNITS
from actors.errors import ConfigError

SHOWN_DEFAULTS = {"instance_id": "`<hostname>-<pid>`", "data_dir": "`$XDG_STATE_HOME/durable-emitter/pgdata`"}


@dataclass(frozen=True)
class Rule:
    """A bound that involves more than one field (or a text's shape), with the two configurations
    that show it: tests/unit/test_config_table.py checks that EmitterConfig refuses the one and
    takes the other, so the page states only what the code enforces."""

    text: str
    refused: dict[str, Any]
    accepted: dict[str, Any]


RULES = {
    "database_url": Rule("not together with embedded_postgres", {"database_url": "postgresql:///x",
                                                                 "embedded_postgres": True},
                         {"database_url": "postgresql:///x"}),
    "chip_endpoint": Rule("`host:port` (`[address]:port` for IPv6)", {"chip_endpoint": "::1:50051"},
                          {"chip_endpoint": "[::1]:50051"}),
    "chip_username": Rule("with chip_password", {"chip_username": "u"},
                          {"chip_username": "u", "chip_password": "p", "chip_endpoint": "127.0.0.1:1"}),
    "chip_password": Rule("with chip_username; credentials need TLS beyond loopback",
                          {"chip_username": "u", "chip_password": "p", "chip_endpoint": "chip.example:443"},
                          {"chip_username": "u", "chip_password": "p", "chip_endpoint": "chip.example:443",
                           "chip_tls": True}),
    "chip_auth_public_key": Rule("64 hex characters (32 bytes)", {"chip_auth_public_key": "zz"},
                                 {"chip_auth_public_key": "00" * 32}),
    "schema": Rule("a plain lower-case Postgres name (letters, digits, `_`)", {"schema": "Events"},
                   {"schema": "events_2"}),
    "instance_id": Rule("not empty, not `outbox` or `replay`", {"instance_id": "outbox"}, {"instance_id": "a"}),
    "lease_duration": Rule("more than 2 x publish_timeout", {"lease_duration": 10.0, "publish_timeout": 5.0},
                           {"lease_duration": 10.5, "publish_timeout": 5.0}),
    "max_request_bytes": Rule("above max_event_bytes", {"max_request_bytes": 4 * 1024 * 1024},
                              {"max_request_bytes": 4 * 1024 * 1024 + 1}),
    "max_event_bytes": Rule("below max_request_bytes", {"max_event_bytes": 100, "max_request_bytes": 100},
                            {"max_event_bytes": 99, "max_request_bytes": 100}),
}


@dataclass(frozen=True)
class Row:
    keyword: str
    variable: str  # "(code only)" for a field no variable sets
    default: str
    unit: str
    accepted: str
    meaning: str


def field_comments() -> dict[str, str]:
    """The comment above each field in ``actors/config.py`` (and any beside it).

    A comment heads a group of fields up to the next blank line: its first field
    gets the text; the others their own comment beside them.
    """
    source = Path(config_module.__file__).read_text()  # installed or not
    body = source[source.index("class EmitterConfig"):source.index("def __post_init__")]
    comments: dict[str, str] = {}
    block: list[str] = []
    used = False
    for line in body.splitlines():
        stripped = line.strip()
        if not stripped:
            block, used = [], False
        elif stripped.startswith("#"):
            if used:
                block, used = [], False
            block.append(stripped.lstrip("#").strip())
        elif match := re.match(r"    (\w+): ", line):
            beside = line.split("  # ", 1)[1].strip() if "  # " in line else ""
            above = "" if used else " ".join(block)
            comments[match.group(1)] = f"{above} ({beside})" if above and beside else above or beside
            used = True
    return comments


def variable(field: dataclasses.Field[Any]) -> str:
    if field.metadata.get("env") is False:
        return "(code only)"
    return ENV_NAMES.get(field.name, f"{ENV_PREFIX}{field.name.upper()}")


def _default(field: dataclasses.Field[Any]) -> str:
    if field.name in SHOWN_DEFAULTS:
        return SHOWN_DEFAULTS[field.name]
    value = field.default if field.default is not dataclasses.MISSING else field.default_factory()  # type: ignore[misc]
    if value is None:
        return "unset"
    if field.metadata.get("unit") == "seconds":
        return f"`{_duration(value)}`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, int):
        return f"`{value:_}`"
    return f"`{value}`"


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0 and (unit != "d" or seconds > 86400):
            return f"{seconds / size:g}{unit}"
    return f"{seconds * 1000:g}ms" if seconds < 1 else f"{seconds:g}s"


def _unit(field: dataclasses.Field[Any]) -> str:
    if field.metadata.get("unit") == "seconds":
        return "time"
    if field.name.endswith("_bytes"):
        return "bytes"
    return ""


def _accepts(**values: Any) -> bool:
    try:
        EmitterConfig(**values)
    except ConfigError:
        return False
    return True


def _bounds(field: dataclasses.Field[Any]) -> str:
    """The lower (and upper) bound EmitterConfig enforces on a number, found by asking it."""
    whole = str(field.type).startswith("int")
    step = 1 if whole else 1e-6
    seconds = field.metadata.get("unit") == "seconds"
    shown = (lambda v: _duration(v) if v else "0") if seconds else (lambda v: f"{v:g}")
    found = []
    if not _accepts(**{field.name: -1}):
        for bound in (0, 1, 600):
            if _accepts(**{field.name: bound}) and not _accepts(**{field.name: bound - step}):
                found.append(f">= {shown(bound)}")
                break
            if not _accepts(**{field.name: bound}) and _accepts(**{field.name: bound + step}):
                found.append(f"> {shown(bound)}")
                break
    if not _accepts(**{field.name: 10**9}):
        for bound in (65535,):
            if _accepts(**{field.name: bound}) and not _accepts(**{field.name: bound + 1}):
                found.append(f"<= {bound}")
    return ", ".join(found)


def _accepted(field: dataclasses.Field[Any]) -> str:
    kind = str(field.type)
    words = [("Callable", "a callable"), ("Mapping", "`name=value,...`"), ("Path", "a path"), ("bool", "a boolean"),
             ("int", "a whole number"), ("float", "a number"), ("str", "text")]
    text = "a duration" if field.metadata.get("unit") == "seconds" else next(w for k, w in words if k in kind)
    if "None" in kind:
        text += " or unset"
    numeric = kind.split(" ")[0] in ("int", "float")
    limits = [part for part in (_bounds(field) if numeric else "", RULES[field.name].text
                                if field.name in RULES else "") if part]
    return "; ".join([text, *limits])


def legend() -> str:
    """How the environment's values are spelt, from the parser's own tables."""
    units = ", ".join(f"`{unit}`" for unit in _UNITS)
    return (f"Durations take a unit ({units}; combined as in Go: `1m30s`); a bare `0` is the one number "
            f"without one. Booleans: `{'`, `'.join(sorted(_TRUE))}` or `{'`, `'.join(sorted(f for f in _FALSE if f))}` "
            "(empty is false). Whole numbers may hold `_` (`1_000_000`).")


def rows() -> list[Row]:
    comments = field_comments()
    return [Row(field.name, variable(field), _default(field), _unit(field), _accepted(field),
                comments.get(field.name, "")) for field in dataclasses.fields(EmitterConfig)]


def render() -> str:
    """The table as Markdown (MyST renders it in the docs)."""
    lines = ["| keyword | environment variable | default | unit | accepted | what it does |",
             "|---|---|---|---|---|---|"]
    for row in rows():
        name = row.variable if row.variable == "(code only)" else f"`{row.variable}`"
        cells = [f"`{row.keyword}`", name, row.default, row.unit, row.accepted, row.meaning]
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    return "\n".join([*lines, "", legend()])


def main() -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    print(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
