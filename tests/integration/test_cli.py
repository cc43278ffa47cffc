"""The operator CLI against a real database (and a real chipmock for drain)."""

import json
import os
import subprocess
import sys

import actors
from actors.adapters.store import Session, Store
from actors.core.answers import Rejection
from chipmock import ChipModel
from chippb import cloudevent_pb2 as ce
from tests.helpers import dead_letters, pending_ids, query


def cli(database_url: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "DATABASE_URL": database_url, **env}
    environment.pop("CHIP_INGRESS_ENDPOINT", None) if "CHIP_INGRESS_ENDPOINT" not in env else None
    return subprocess.run([sys.executable, "-m", "actors.cli", *args], capture_output=True, text=True,
                          timeout=120, env=environment)


def _event(event_id: str) -> bytes:
    return ce.CloudEvent(id=event_id, source="wf", spec_version="1.0", type="t", binary_data=b"x").SerializeToString()


async def _seed(database_url: str) -> None:
    """Rows of node-a, an instance that ran with session liveness and stopped (its record stays)."""
    store = Store(database_url, Session(application_name="durable-emitter node-a"))
    await store.record_instance("node-a", session_liveness=True, grace=60, lease=60)
    ids = ["p1", "p2", "d1", "d2"]
    await store.insert_events(ids, [_event(i) for i in ids], owner="node-a", hold=60)
    await store.dead_letter([Rejection("d1", "SCHEMA_MISSING", "no schema"), Rejection("d2", "EXPIRED", "too old")], owner="node-a")
    store.close()


def _seed_from_a_process_that_ended(database_url: str) -> None:
    """:func:`_seed` in a child process that has exited: node-a's record names a process that is gone."""
    seeding = "import sys, trio; from tests.integration.test_cli import _seed; trio.run(_seed, sys.argv[1])"
    subprocess.run([sys.executable, "-c", seeding, database_url], check=True, timeout=60,
                   cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


async def test_status_reports_pending_leases_and_dead_letters(database_url) -> None:
    await _seed(database_url)
    done = cli(database_url, "status")
    assert done.returncode == 0, done.stderr
    assert "pending rows    2" in done.stdout
    # Its lock free and its connections ended, but no running instance proves it dead: it gets its grace.
    assert "node-a: 2 rows (liveness lock free: claimable unless taken back within its grace, 0 lapsed)" in done.stdout
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
    _seed_from_a_process_that_ended(database_url)
    cli(database_url, "dlq", "replay", "--all")
    # node-a's leases have not lapsed, but its process is gone from this host: a drain with
    # its own (default) instance id claims those rows at once, without waiting for a grace.
    done = cli(database_url, "drain", "--timeout", "60s", CHIP_INGRESS_ENDPOINT=chip.endpoint)
    assert done.returncode == 0, done.stderr
    assert pending_ids(database_url) == set()
    assert chip.counters.seen(["p1", "p2", "d1", "d2"]) == {"p1", "p2", "d1", "d2"}
    assert done.stdout == "drain finished: 4 delivered, 0 dead-lettered, 0 left pending\n"  # progress: stderr


async def test_drain_ends_on_an_exact_count_when_the_estimate_still_sees_rows(database_url, chip) -> None:
    # A table past the exact-count size, analyzed full and then emptied without a vacuum:
    # the planner's estimate still says tens of thousands of rows; the table holds none.
    query(database_url, "ALTER TABLE chip_durable_events SET (autovacuum_enabled = false)")
    query(database_url, "INSERT INTO chip_durable_events (id, payload, lease_owner, lease_expires_at) "
                        "SELECT 'gone-' || g, convert_to(repeat('p', 400), 'UTF8'), 'gone', now() "
                        "FROM generate_series(1, 30000) g")
    query(database_url, "ANALYZE chip_durable_events")
    query(database_url, "DELETE FROM chip_durable_events")
    done = cli(database_url, "drain", "--timeout", "20s", CHIP_INGRESS_ENDPOINT=chip.endpoint)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "drain finished: 0 delivered, 0 dead-lettered, 0 left pending\n"


async def test_drain_says_limited_while_chip_rate_limits_it(database_url, start_chipmock) -> None:
    store = Store(database_url, Session(application_name="durable-emitter node-a"))
    await store.record_instance("node-a", session_liveness=True, grace=60, lease=60)
    ids = [f"r{i}" for i in range(1500)]
    await store.insert_events(ids, [_event(i) for i in ids], owner="node-a", hold=0)  # claimable
    store.close()
    limited = start_chipmock(ChipModel(rate_limit=500))  # three seconds of rows, in batches of 100
    done = cli(database_url, "drain", "--timeout", "60s", CHIP_INGRESS_ENDPOINT=limited.endpoint,
               DURABLE_EMITTER_PUBLISH_BATCH_SIZE="100")
    assert done.returncode == 0, done.stderr
    assert "delivery limited" in done.stderr and "delivery down" not in done.stderr  # progress lines
    assert done.stdout == "drain finished: 1,500 delivered, 0 dead-lettered, 0 left pending\n"
    assert limited.counters.snapshot().rate_limited > 0


async def test_drain_says_when_everything_was_dead_lettered(database_url, start_chipmock) -> None:
    await _seed(database_url)
    rejecting = start_chipmock(ChipModel(event_failure_rate=1.0, event_failure_code="VALIDATION_FAILED"))
    done = cli(database_url, "drain", "--timeout", "60s", CHIP_INGRESS_ENDPOINT=rejecting.endpoint,
               DURABLE_EMITTER_INSTANCE_ID="node-a")
    assert done.returncode == 0, done.stderr
    assert "0 delivered, 2 dead-lettered, 0 left pending" in done.stdout


async def test_status_and_dlq_list_as_json_and_a_probe_on_the_oldest_age(database_url) -> None:
    await _seed(database_url)
    status = json.loads(cli(database_url, "status", "--json").stdout)
    assert status["pending_rows"] == 2 and status["dead_letters"] == {"SCHEMA_MISSING": 1, "EXPIRED": 1}
    assert status["lease_owners"] == [{"owner": "node-a", "rows": 2, "lapsed": 0, "liveness": "lock lost",
                                       "running": None}]  # stopped, or cut off: nobody can tell yet
    listed = [json.loads(line) for line in cli(database_url, "dlq", "list", "--json").stdout.splitlines()]
    assert {row["id"]: row["reason_code"] for row in listed} == {"d1": "SCHEMA_MISSING", "d2": "EXPIRED"}

    assert cli(database_url, "status", "--max-oldest", "1h").returncode == 0
    late = cli(database_url, "status", "--max-oldest", "1ms")
    assert late.returncode == 3 and "past --max-oldest" in late.stderr


async def test_dlq_show_decodes_the_event_and_purge_deletes_by_age_and_reason(database_url) -> None:
    await _seed(database_url)
    shown = cli(database_url, "dlq", "show", "d1")
    assert shown.returncode == 0, shown.stderr
    letter = json.loads(shown.stdout)
    assert (letter["reason_code"], letter["reason"]) == ("SCHEMA_MISSING", "no schema")
    assert letter["event"]["id"] == "d1" and letter["event"]["source"] == "wf"
    assert cli(database_url, "dlq", "show", "nope").returncode == 1

    kept = cli(database_url, "dlq", "purge", "--older-than", "7d")
    assert kept.returncode == 0 and "purged 0 dead letter(s)" in kept.stdout
    purged = cli(database_url, "dlq", "purge", "--older-than", "0", "--reason", "EXPIRED")
    assert purged.returncode == 0 and "purged 1 dead letter(s)" in purged.stdout
    assert set(dead_letters(database_url)) == {"d1"}


def test_bad_arguments_are_usage_errors_that_never_reach_postgres() -> None:
    nowhere = "postgresql://ops@127.0.0.1:1/events"
    for args, says in [(["dlq", "list", "--limit", "-5"], "'-5' is not a positive whole number"),
                       (["drain", "--timeout", "5x"], "'5x' is not a duration"),
                       (["status", "--max-oldest", "5"], "'5' has no unit")]:
        done = cli(nowhere, *args)
        assert done.returncode == 2 and says in done.stderr, (args, done.stderr)
        assert "cannot reach" not in done.stderr


def test_version() -> None:
    done = cli("postgresql://ops@127.0.0.1:1/events", "--version")
    assert done.returncode == 0 and done.stdout.strip() == f"durable-emitter {actors.__version__}"
    assert actors.__version__ != "0+unknown"


RUNTIME = {"trio", "psycopg", "grpc", "prometheus_client"}


def imports_of(database_url: str, *args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run the CLI under ``-X importtime``; return the result and every module it imported."""
    environment = {**os.environ, "DATABASE_URL": database_url}
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "actors.cli", *args], capture_output=True,
                          text=True, timeout=120, env=environment)
    modules = {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines()
               if line.startswith("import time:") and not line.endswith("| imported package")}
    return done, modules


def test_version_and_help_answer_without_loading_the_runtime() -> None:
    nowhere = "postgresql://ops@127.0.0.1:1/events"
    for args in (["--version"], ["--help"], ["status", "--help"], ["dlq", "list", "--help"], ["drain", "--help"],
                 ["schema", "apply", "--help"]):
        done, modules = imports_of(nowhere, *args)
        assert done.returncode == 0 and "durable-emitter" in done.stdout, (args, done.stderr[-2000:])
        assert {name.split(".")[0] for name in modules} & RUNTIME == set(), args


async def test_status_loads_psycopg_alone_not_trio_grpc_protobuf_or_the_store(database_url) -> None:
    """status is what probes run: it answers on psycopg alone (the import time is most of its time)."""
    await _seed(database_url)
    done, modules = imports_of(database_url, "status")
    assert done.returncode == 0 and "pending rows    2" in done.stdout, done.stderr[-2000:]
    assert "psycopg" in modules
    loaded = {name.split(".")[0] for name in modules} | modules
    assert not {"trio", "grpc", "google", "prometheus_client", "cryptography", "actors.tree",
                "actors.adapters.chip", "actors.adapters.store", "actors.adapters.driver"} & loaded


def test_drain_without_a_chip_endpoint_is_a_clear_error(database_url) -> None:
    done = cli(database_url, "drain")
    assert done.returncode == 1 and "CHIP_INGRESS_ENDPOINT" in done.stderr and "Traceback" not in done.stderr


def test_unreachable_database_is_one_line() -> None:
    done = cli("postgresql://ops:pa55word@127.0.0.1:1/events", "status")
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0 and "127.0.0.1:1/events" in done.stderr
    assert "pa55word" not in done.stderr
