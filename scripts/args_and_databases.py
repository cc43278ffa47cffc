"""Command-line argument types and scratch PostgreSQL databases, shared by the scripts and the tests."""

from __future__ import annotations

import argparse
import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

from actors.adapters.postgres import start_embedded
from actors.config import parse_duration

# -- argument types: argparse names each one's __name__ in its error message -----------------


def duration(text: str) -> float:
    """A duration with units (``500ms``, ``20s``, ``1m30s``); argparse shows the parser's own message."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def durations(text: str) -> list[float]:
    """``"0,5ms,20ms"`` -> ``[0.0, 0.005, 0.02]`` (a bare 0 needs no unit)."""
    return [0.0 if part.strip() == "0" else duration(part) for part in text.split(",")]


def positive_ints(text: str) -> list[int]:
    """``"100,500,1k"`` -> ``[100, 500, 1000]``."""
    values = [int(float(v.replace("k", "e3"))) for v in text.split(",") if v.strip()]
    if not values or min(values) <= 0:
        raise ValueError
    return values


positive_ints.__name__ = "comma-separated positive numbers (e.g. 100,500,1k)"


# -- scratch databases ------------------------------------------------------------------------


def server_url(data_dir: Path | None = None) -> str:
    """The server scratch databases go on: ``DATABASE_URL`` if set, else an embedded PostgreSQL.

    With ``data_dir`` the embedded server keeps its data there between runs
    (started or reused; stopped when the last process using it exits).
    Without, it gets a fresh temporary folder, deleted when this process exits.
    That folder is not under pytest's tmp_path on purpose: pytest deletes old
    tmp_path folders when other pytest runs start, which would pull the data out
    from under a running server.
    """
    url = os.environ.get("DATABASE_URL")
    if url:
        return url
    if data_dir is not None:
        return start_embedded(data_dir)
    return start_embedded(Path(tempfile.mkdtemp(prefix="durable-emitter-scratch-pg-")), delete_at_exit=True)


@contextmanager
def scratch_database(server: str, prefix: str) -> Iterator[str]:
    """A new empty database ``<prefix>_<random>`` on ``server``; yields its URL, drops it afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_conninfo(server, dbname=name)
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
