"""Reading ``EmitterConfig`` from the environment: variable names, durations, booleans, typed values.

Every field has a variable (``DURABLE_EMITTER_<FIELD>``, or its ``CHIP_INGRESS_*``
/ ``DATABASE_URL`` name); a malformed value raises :class:`ConfigError` naming
the variable (a secret's value shown as ``***``), and an unknown
``DURABLE_EMITTER_*`` variable is logged with the closest known name.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .core.credentials import parse_headers
from .errors import ConfigError
from .logs import get_logger

log = get_logger("durable_emitter.config")

_DURATION_PART = r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h|d)"
_DURATION = re.compile(f"(?:{_DURATION_PART})+")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}



ENV_PREFIX = "DURABLE_EMITTER_"
ENV_NAMES = {
    "database_url": "DATABASE_URL",
    "chip_endpoint": "CHIP_INGRESS_ENDPOINT",
    "chip_tls": "CHIP_INGRESS_TLS",
    "chip_ca_file": "CHIP_INGRESS_CA_FILE",
    "chip_username": "CHIP_INGRESS_USERNAME",
    "chip_password": "CHIP_INGRESS_PASSWORD",
    "chip_auth_key_file": "CHIP_INGRESS_AUTH_KEY_FILE",
    "chip_auth_ttl": "CHIP_INGRESS_AUTH_TTL",
    "chip_auth_public_key": "CHIP_INGRESS_AUTH_PUBLIC_KEY",
    "chip_auth_headers": "CHIP_INGRESS_AUTH_HEADERS",
    "chip_auth_plaintext": "CHIP_INGRESS_AUTH_PLAINTEXT",
}



def values_from_env(fields: Sequence[dataclasses.Field[Any]], env: Mapping[str, str],
                    skip: Sequence[str] = ()) -> dict[str, Any]:
    """The value of each field whose variable is set in ``env`` (but those in ``skip``), parsed by its type."""
    values: dict[str, Any] = {}
    for f in fields:
        name = ENV_NAMES.get(f.name, f"{ENV_PREFIX}{f.name.upper()}")
        raw = env.get(name)
        if raw is None or f.name in skip or f.metadata.get("env") is False:
            continue
        try:
            values[f.name] = _parse_field(f, raw)
        except ValueError as exc:
            shown = raw if f.repr else "***"
            raise ConfigError(f"{name}={shown!r}: {exc}") from None
    _warn_about_unknown_variables(env, fields)
    return values


def parse_duration(text: str) -> float:
    """Seconds from a duration with units, Go's spelling included. Raises ValueError.

    ``"50ms"`` -> 0.05, ``"2s"``, ``"1.5s"``, ``"1m30s"`` -> 90.0, ``"1h"``;
    ``"7d"`` (days, beyond Go); ``"0"`` alone needs no unit. A bare number is refused: ``--latency 50``
    meaning 50 seconds surprised everyone who meant milliseconds.
    (``chipmock/model.py`` keeps a copy that must behave the same; a test checks.)
    """
    stripped = text.strip()
    if stripped == "0":
        return 0.0
    if re.fullmatch(r"\d+(?:\.\d*)?|\.\d+", stripped):
        raise ValueError(f"{text!r} has no unit: write {stripped}s or {stripped}ms")
    if not _DURATION.fullmatch(stripped):
        raise ValueError(f"{text!r} is not a duration (examples: 50ms, 2s, 1m30s, 1h)")
    return sum(float(number) * _UNITS[unit] for number, unit in re.findall(_DURATION_PART, stripped))


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"{text!r} is not a boolean (use true or false)")


def _warn_about_unknown_variables(env: Mapping[str, str], fields: Sequence[dataclasses.Field[Any]]) -> None:
    """A mistyped ``DURABLE_EMITTER_*`` variable would be ignored in silence: name the closest known one."""
    known = [ENV_NAMES.get(f.name, f"{ENV_PREFIX}{f.name.upper()}") for f in fields
             if f.metadata.get("env") is not False]
    for name in sorted(n for n in env if n.startswith(ENV_PREFIX) and n not in known):
        closest = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f"did you mean {closest[0]}?" if closest else "see the configuration page (docs/configuration.md)"
        log.warning(f"{name} is not a durable-emitter setting and is ignored; {hint}", variable=name)


def _parse_field(f: dataclasses.Field[Any], raw: str) -> Any:
    kind = str(f.type)
    if f.metadata.get("unit") == "seconds":
        return parse_duration(raw)
    if kind.startswith("bool"):
        return parse_bool(raw)
    if kind.startswith("int"):
        try:
            return int(raw.replace("_", ""))
        except ValueError:
            raise ValueError(f"{raw!r} is not a whole number") from None
    if kind.startswith("float"):
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"{raw!r} is not a number") from None
    if "Path" in kind:
        return Path(raw)
    if "Mapping" in kind:
        return parse_headers(raw)
    if not raw.strip():
        raise ValueError("is empty")
    return raw.strip()
