"""The operator CLI against a real database (and a real chipmock for drain)."""

import os
import subprocess
import sys

from actors.adapters.store import Store
from chippb import cloudevent_pb2 as ce
from tests.fix_postgres import dead_letters, pending_ids


def cli(database_url: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "DATABASE_URL": database_url, **env}
    environment.pop("CHIP_INGRESS_ENDPOINT", None) if "CHIP_INGRESS_ENDPOINT" not in env else None
    return subprocess.run([sys.executable, "-m", "actors.cli", *args], capture_output=True, text=True,
                          timeout=120, env=environment)


def _event(event_id: str) -> bytes:
    return ce.CloudEvent(id=event_id, source="wf", spec_version="1.0", type="t", binary_data=b"x").SerializeToString()


async def _seed(database_url: str) -> None:
    store = Store(database_url)
    ids = ["p1", "p2", "d1", "d2"]
    await store.insert_events(ids, [_event(i) for i in ids], owner="node-a", lease=60, spilled=False)
    await store.dead_letter([("d1", "SCHEMA_MISSING", "no schema"), ("d2", "EXPIRED", "too old")], owner="node-a")
    store.close()


async def test_status_reports_pending_leases_and_dead_letters(database_url) -> None:
    await _seed(database_url)
    done = cli(database_url, "status")
    assert done.returncode == 0, done.stderr
    assert "pending rows    2" in done.stdout
    assert "node-a: 2 rows (not running: claimable now, 0 lapsed)" in done.stdout  # nobody holds its lock
    assert "SCHEMA_MISSING: 1" in done.stdout and "EXPIRED: 1" in done.stdout
    assert "dead tuples" in done.stdout and "oldest xact" in done.stdout


async def test_dlq_list_and_replay(database_url) -> None:
    await _seed(database_url)
    listing = cli(database_url, "dlq", "list", "--reason", "EXPIRED")
    assert listing.returncode == 0 and "d2" in listing.stdout and "d1" not in listing.stdout

    unknown = cli(database_url, "dlq", "replay", "--id", "d1", "--id", "nope")
    assert unknown.returncode == 1 and "no dead letter with id nope" in unknown.stderr
    assert set(dead_letters(database_url)) == {"d1", "d2"}  # nothing moved half-way

    replayed = cli(database_url, "dlq", "replay", "--id", "d1")
    assert replayed.returncode == 0 and "replayed 1 event" in replayed.stdout
    assert pending_ids(database_url) == {"p1", "p2", "d1"}
    assert cli(database_url, "dlq", "replay", "--all").returncode == 0
    assert dead_letters(database_url) == {} and pending_ids(database_url) == {"p1", "p2", "d1", "d2"}


async def test_drain_delivers_everything_pending(database_url, chip) -> None:
    await _seed(database_url)
    cli(database_url, "dlq", "replay", "--all")
    # node-a's leases have not lapsed, but node-a is not running: a drain with its
    # own (default) instance id claims those rows at once.
    done = cli(database_url, "drain", "--timeout", "60s", CHIP_INGRESS_ENDPOINT=chip.endpoint)
    assert done.returncode == 0, done.stderr
    assert pending_ids(database_url) == set()
    assert chip.counters.seen(["p1", "p2", "d1", "d2"]) == {"p1", "p2", "d1", "d2"}


def test_drain_without_a_chip_endpoint_is_a_clear_error(database_url) -> None:
    done = cli(database_url, "drain")
    assert done.returncode == 1 and "CHIP_INGRESS_ENDPOINT" in done.stderr and "Traceback" not in done.stderr


def test_unreachable_database_is_one_line() -> None:
    done = cli("postgresql://ops:pa55word@127.0.0.1:1/events", "status")
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0 and "127.0.0.1:1/events" in done.stderr
    assert "pa55word" not in done.stderr
