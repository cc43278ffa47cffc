"""The SQL of the host's own transaction (``actors.outbox``) and of the notification a running emitter hears."""

from __future__ import annotations

import hashlib

# Rows the outbox writes belong to no instance until one claims them: this marker
# is their owner (and their emitted_by), and their lease lapses as they are written
# (now(): the writing transaction's start), so any instance but a writer-only one
# claims them with CLAIM_EVENTS, in their turn, oldest lapse first, beside spilled
# and released rows. The marker has no instance record, so no claim judges it gone.
OUTBOX_OWNER = "outbox"

# The rows and one notification in one statement, in the caller's transaction: the
# notification is delivered at its commit and dropped with a rollback, and Postgres
# folds identical notifications of one transaction into one. {schema} is a checked
# plain name and the functions are pg_catalog's, so the caller's search_path is
# neither relied on nor changed.
OUTBOX_INSERT = """
WITH written AS (
    INSERT INTO "{schema}".chip_durable_events (id, payload, lease_owner, emitted_by, lease_expires_at)
    SELECT id, payload, %(owner)s, %(owner)s, pg_catalog.now()
    FROM unnest(%(ids)b::text[], %(payloads)b::bytea[]) AS t(id, payload)  -- syntax, not a function
)
SELECT pg_catalog.pg_notify(%(channel)s, '')
"""

# A running dispatcher listens on its own connection (adapters/listener.py).
LISTEN = 'LISTEN "{channel}"'


def outbox_channel(schema: str) -> str:
    """The channel the outbox notifies for ``schema``'s table: ``durable_emitter_<schema>``.

    Postgres cuts names at 63 bytes (and ``pg_notify`` refuses longer ones): a
    longer name keeps its first 54 characters and a hash of the whole schema name.
    """
    name = f"durable_emitter_{schema}"
    if len(name) <= 63:
        return name
    return f"{name[:54]}_{hashlib.blake2s(schema.encode(), digest_size=4).hexdigest()}"
