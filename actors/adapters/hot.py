"""The record of a hot statement; :mod:`.driver` prepares and runs it, :mod:`.queries` names each one.

Apart from the driver so that the SQL can be read without loading Trio: the
outbox (:mod:`actors.outbox`) runs in hosts that never start an emitter.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HotStatement:
    """A statement on every event's path: prepared once per connection and run without a cursor.

    Its parameters are dumped by the caller (binary, :func:`.driver.binary_array`
    for arrays), so a run is one send and one answer with no per-statement Python
    in between (psycopg's cursor, query conversion and adapters cost more than
    the 10-row INSERT they carried).
    """

    name: bytes
    sql: bytes
    types: tuple[int, ...]  # parameter type oids
