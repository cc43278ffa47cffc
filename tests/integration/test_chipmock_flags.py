"""Each flag of `python -m chipmock`, as the CLI maps it, over real gRPC to the real process.

One process per flag set, a few calls each. The banner says how the flags were read
(the model's knobs that differ from the defaults); the answers say they are in force.
No sleeps and no timings: windows are set to cover "now" (``0s:1h``) or not yet
(``1h:1s``), the rate limit is driven by counts, latency by a deadline it cannot meet.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from chipmock.model import ChipModel, ChipState, EventView, Outage, RejectContaining, RejectWindow
from chippb import chipingress_pb2 as pb
from chippb import chipingress_pb2_grpc as pb_grpc
from chippb import cloudevent_pb2 as ce

START_TIMEOUT = 30.0  # a line from the child, at most
STOP_TIMEOUT = 10.0
CALL_TIMEOUT = 10.0
_BANNER = re.compile(r"listening on (\S+) \((.*)\)(?:, metrics on (http://\S+/metrics))?$")


@dataclass
class Chipmock:
    proc: subprocess.Popen[bytes]
    endpoint: str
    model: str  # the banner's description of the model the flags made
    metrics_url: str | None
    stub: pb_grpc.ChipIngressStub
    summary: str = ""  # the line printed when stopped

    def metrics(self) -> str:
        assert self.metrics_url
        with urllib.request.urlopen(self.metrics_url, timeout=CALL_TIMEOUT) as response:
            return response.read().decode()


def _first_line(proc: subprocess.Popen[bytes]) -> str:
    """The child's first line of output, read straight from the pipe with a deadline."""
    assert proc.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT
    buffered = b""
    while b"\n" not in buffered:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise AssertionError(f"chipmock printed no line within {START_TIMEOUT:g}s")
        chunk = os.read(proc.stdout.fileno(), 4096)
        if not chunk:
            raise AssertionError(f"chipmock exited before its banner: {buffered!r}")
        buffered += chunk
    return buffered.decode().partition("\n")[0]


def _stop(proc: subprocess.Popen[bytes]) -> str:
    """SIGTERM by pid (SIGKILL after STOP_TIMEOUT); what it printed after its banner."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=STOP_TIMEOUT)
    return out.decode()


@contextlib.contextmanager
def chipmock(*flags: str) -> Iterator[Chipmock]:
    """A chipmock process with ``flags`` on a free 127.0.0.1 port (no metrics unless a flag asks)."""
    metrics = () if "--metrics-port" in flags else ("--metrics-port", "-1")
    proc = subprocess.Popen([sys.executable, "-m", "chipmock", "--host", "127.0.0.1", "--port", "0", *metrics, *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        banner = _first_line(proc)
        match = _BANNER.search(banner)
        assert match, banner
        with grpc.insecure_channel(match.group(1)) as channel:
            running = Chipmock(proc, match.group(1), match.group(2), match.group(3), pb_grpc.ChipIngressStub(channel))
            yield running
    finally:
        output = _stop(proc)
    running.summary = output
    assert proc.returncode == 0, output


def _event(name: str, data: bytes = b"x", dataschema: str | None = None) -> ce.CloudEvent:
    event = ce.CloudEvent(id=name, source="test", spec_version="1.0", type="t", binary_data=data)
    if dataschema is not None:
        event.attributes["dataschema"].ce_uri = dataschema
    return event


def _batch(*events: ce.CloudEvent, **options: bool) -> pb.CloudEventBatch:
    return pb.CloudEventBatch(events=events, options=pb.PublishOptions(**options) if options else None)


def _failure(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def _errors(response: pb.PublishResponse) -> list[int | None]:
    return [r.error.error_code if r.HasField("error") else None for r in response.results]


def test_latency_and_jitter_delay_publishes_but_not_pings() -> None:
    with chipmock("--latency", "1s", "--jitter", "250ms") as chip:
        assert chip.model == "latency=1s jitter=250ms" and chip.metrics_url is None
        assert chip.stub.Ping(pb.EmptyRequest(), timeout=CALL_TIMEOUT).message == "pong"
        late = _failure(lambda: chip.stub.PublishBatch(_batch(_event("a")), timeout=0.1))  # 0.75 s at least
        assert late.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_a_seed_replays_the_random_failures_the_rates_ask_for() -> None:
    """The same seed and rates through the pure model give the answers the process gave, call by call."""
    expected = ChipModel(failure_rate=0.3, resource_exhausted_rate=0.2, event_failure_rate=0.5,
                         event_failure_code="VALIDATION_FAILED", reject_reason="odd\x00reason", seed=7)
    seen, replayed = [], []
    state = ChipState(seed=7)
    with chipmock("--failure-rate", "0.3", "--resource-exhausted-rate", "0.2", "--event-failure-rate", "0.5",
                  "--event-failure-code", "VALIDATION_FAILED", "--reject-reason", "odd\\x00reason",
                  "--seed", "7") as chip:
        assert chip.model == expected.describe()
        for call in range(12):
            names = [f"{call}-{i}" for i in range(4)]
            try:
                response = chip.stub.PublishBatch(_batch(*map(_event, names)), timeout=CALL_TIMEOUT)
                seen.append([(r.error.error_code, r.error.reason) if r.HasField("error") else None
                             for r in response.results])
            except grpc.RpcError as exc:
                seen.append((exc.code().name, exc.details()))
            decision = state.call(expected, elapsed=0, batch_size=4)
            if decision.status is not None:
                replayed.append((decision.status, decision.detail))
            else:
                answers = state.events(expected, [EventView(name) for name in names], elapsed=0)
                replayed.append([(pb.VALIDATION_FAILED, a.reason) if a else None for a in answers])
    assert seen == replayed
    kinds = {s[0] if isinstance(s, tuple) else "answered" for s in seen}
    assert kinds == {"UNAVAILABLE", "RESOURCE_EXHAUSTED", "answered"}  # seed 7 shows every kind in 12 calls
    assert (pb.VALIDATION_FAILED, "odd\x00reason") in [a for s in seen if isinstance(s, list) for a in s]


@pytest.mark.parametrize(("now", "later", "status", "detail"), [
    ("--outage", "--unauthenticated", grpc.StatusCode.UNAVAILABLE, "chipmock: outage window"),
    ("--unauthenticated", "--outage", grpc.StatusCode.UNAUTHENTICATED, "chipmock: credentials refused (window)"),
])
def test_a_window_covering_now_fails_every_call_and_a_later_window_does_not_yet(now: str, later: str, status,
                                                                                 detail: str) -> None:
    with chipmock(now, "0s:1h", later, "1h:1s") as chip:
        windows = {now: (Outage(0, 3600),), later: (Outage(3600, 1),)}
        assert chip.model == ChipModel(outages=windows["--outage"], unauthenticated=windows["--unauthenticated"]
                                       ).describe()
        for call in (lambda: chip.stub.Ping(pb.EmptyRequest(), timeout=CALL_TIMEOUT),
                     lambda: chip.stub.Publish(_event("a"), timeout=CALL_TIMEOUT),
                     lambda: chip.stub.PublishBatch(_batch(_event("b")), timeout=CALL_TIMEOUT),
                     lambda: chip.stub.RegisterSchema(pb.RegisterSchemaRequest(schemas=[pb.Schema(subject="s")]),
                                                      timeout=CALL_TIMEOUT)):
            failure = _failure(call)
            assert (failure.code(), failure.details()) == (status, detail)
    assert "2 calls (2 failed on purpose), 0 events received" in chip.summary


def test_refuse_fails_every_publish_with_its_code_while_pings_answer() -> None:
    with chipmock("--refuse", "FAILED_PRECONDITION") as chip:
        assert chip.model == "refuse='FAILED_PRECONDITION'"
        assert chip.stub.Ping(pb.EmptyRequest(), timeout=CALL_TIMEOUT).message == "pong"
        refused = _failure(lambda: chip.stub.PublishBatch(_batch(_event("a")), timeout=CALL_TIMEOUT))
        assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_batch_length_size_and_rate_limits_each_fail_whole_calls_their_own_way() -> None:
    with chipmock("--max-batch", "50", "--max-request-bytes", "4000", "--rate-limit", "1/s") as chip:
        assert chip.model == "max_batch=50 max_request_bytes=4000 rate_limit=1/s"
        publish = chip.stub.PublishBatch
        long = _failure(lambda: publish(_batch(*(_event(f"l{i}") for i in range(51))), timeout=CALL_TIMEOUT))
        assert (long.code(), long.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "batch of 51 exceeds max 50")
        large = _failure(lambda: publish(_batch(_event("big", b"x" * 5000)), timeout=CALL_TIMEOUT))
        assert large.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert large.details().startswith("Received message larger than max (")
        # Neither refusal took tokens: the full bucket (1 event) lets 40 through, leaving 39 of debt.
        assert _errors(publish(_batch(*(_event(f"r{i}") for i in range(40))), timeout=CALL_TIMEOUT)) == [None] * 40
        limited = _failure(lambda: publish(_batch(_event("next")), timeout=CALL_TIMEOUT))
        assert (limited.code(), limited.details()) == (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                                       "request rate exceeds the maximum allowed (1 events/s)")
        assert 30_000 < int(dict(limited.trailing_metadata())["retry-after-ms"]) <= 40_000  # debt 39, needs 1
        assert chip.stub.Ping(pb.EmptyRequest(), timeout=CALL_TIMEOUT).message == "pong"
    assert "40 events received" in chip.summary and "1 calls rate limited" in chip.summary


@pytest.mark.parametrize(("window", "limited"), [("0s:1h", 1), ("1h:1s", 0)])
def test_a_rate_limit_window_limits_only_while_it_covers_now(window: str, limited: int) -> None:
    with chipmock("--rate-limit", "1/s", "--rate-limit-window", window) as chip:
        assert chip.model == f"rate_limit=1/s rate_limit_window={Outage.parse(window)}"
        for name in ("a", "b"):  # the second exceeds the 1-event bucket, if the limit is in force
            with contextlib.suppress(grpc.RpcError):
                chip.stub.PublishBatch(_batch(_event(name)), timeout=CALL_TIMEOUT)
    assert f"{limited} calls rate limited" in chip.summary


def test_reject_windows_and_chosen_events_answer_per_event_codes() -> None:
    with chipmock("--reject", "SCHEMA_MISSING@0s:1h", "--reject", "DOMAIN_MISCONFIGURATION@1h:1s",
                  "--reject-containing", "VALIDATION_FAILED=poison", "--reject-containing", "7=odd") as chip:
        assert chip.model == ChipModel(
            reject_windows=(RejectWindow("SCHEMA_MISSING", Outage(0, 3600)),
                            RejectWindow("DOMAIN_MISCONFIGURATION", Outage(3600, 1))),
            reject_containing=(RejectContaining("VALIDATION_FAILED", "poison"), RejectContaining("7", "odd")),
        ).describe()
        response = chip.stub.PublishBatch(_batch(_event("a"), _event("b", b"some poison here"), _event("odd-1")),
                                          timeout=CALL_TIMEOUT)
    assert _errors(response) == [pb.SCHEMA_MISSING, pb.VALIDATION_FAILED, 7]  # 7: a code this proto does not name
    assert response.results[0].error.reason == "chipmock: SCHEMA_MISSING window 0:3600s"
    assert "3 rejected" in chip.summary


def test_a_latency_spike_slows_publishes_only_inside_its_window() -> None:
    with chipmock("--latency-spike", "1s@1h:1s") as chip:
        assert chip.model == "latency_spikes=1s@3600s:1s"
        chip.stub.PublishBatch(_batch(_event("a")), timeout=0.5)
    with chipmock("--latency-spike", "1s@0s:1h") as chip:
        late = _failure(lambda: chip.stub.PublishBatch(_batch(_event("a")), timeout=0.1))
        assert late.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert chip.stub.Ping(pb.EmptyRequest(), timeout=CALL_TIMEOUT).message == "pong"


def test_the_ids_file_gets_each_event_taken_with_its_arrival_and_sender_before_the_answer(tmp_path) -> None:
    """Appended, across restarts; an event answered with an error is not in it (it was not taken)."""
    ids_file = tmp_path / "received.txt"
    for name in ("a", "b"):
        with chipmock("--ids-file", str(ids_file), "--reject-containing", "VALIDATION_FAILED=poison") as chip:
            before = time.time()
            chip.stub.PublishBatch(_batch(_event(f"{name}1"), _event(f"{name}2", b"poison")), timeout=CALL_TIMEOUT)
            lines = ids_file.read_text().splitlines()  # already there when the call returned
            assert lines[-1].split(" ")[0] == f"{name}1"
            arrived, peer = float(lines[-1].split(" ")[1]), lines[-1].split(" ")[2]
            assert before <= arrived <= time.time() and re.fullmatch(r"ipv4:127\.0\.0\.1:\d+", peer)
    assert [line.split(" ")[0] for line in ids_file.read_text().splitlines()] == ["a1", "b1"]


def test_required_schemas_come_from_the_flag_and_from_register_schema_and_options_are_counted() -> None:
    with chipmock("--require-schemas", "--schema", "/preloaded/v1", "--metrics-port", "0") as chip:
        assert chip.model == "require_schemas=True schemas=/preloaded/v1" and chip.metrics_url

        def publish(round_: int, **options: bool) -> list[int | None]:
            events = [_event(f"{round_}-a", dataschema="/preloaded/v1"), _event(f"{round_}-b", dataschema="/late/v1"),
                      _event(f"{round_}-c")]
            return _errors(chip.stub.PublishBatch(_batch(*events, **options), timeout=CALL_TIMEOUT))

        assert publish(1) == [None, pb.SCHEMA_MISSING, pb.SCHEMA_MISSING]
        registered = chip.stub.RegisterSchema(pb.RegisterSchemaRequest(schemas=[
            pb.Schema(subject="late-value", path=pb.Path(path="/late/v1"), format=pb.JSON, schema="{}")]),
            timeout=CALL_TIMEOUT)
        assert [(r.subject, r.version) for r in registered.registered] == [("late-value", 1)]
        assert publish(2, transaction_enabled=False) == [None, None, pb.SCHEMA_MISSING]
        metrics = chip.metrics()
    assert 'chipmock_publish_batch_options_total{transaction_enabled="absent"} 1.0' in metrics
    assert 'chipmock_publish_batch_options_total{transaction_enabled="false"} 1.0' in metrics
    assert "3 events received" in chip.summary and "3 rejected" in chip.summary
    assert "options.transaction_enabled: absent=1 unset=0 false=1 true=0" in chip.summary


@pytest.mark.parametrize(("flags", "message"), [
    (["--rate-limit", "100"], "argument --rate-limit: '100' is not a rate"),
    (["--reject", "SCHEMA_MISSING"], "argument --reject: 'SCHEMA_MISSING' is not CODE@START:DURATION"),
    (["--auth-token-key", "abc"], "argument --auth-token-key: 'abc' is not an ed25519 public key"),
    (["--auth-header", "x-api-key"], "argument --auth-header: an --auth-header is NAME=VALUE"),
    (["--auth-token-max-age", "15"], "argument --auth-token-max-age: '15' has no unit"),
])
def test_a_bad_new_flag_value_stops_the_process_with_a_usage_error_naming_it(flags: list[str], message: str) -> None:
    done = subprocess.run([sys.executable, "-m", "chipmock", *flags], capture_output=True, text=True,
                          timeout=START_TIMEOUT)
    assert done.returncode == 2 and "usage: chipmock" in done.stderr and message in done.stderr


def _token(key: Ed25519PrivateKey, *, age: float = 0.0, signed_by: Ed25519PrivateKey | None = None) -> str:
    """A V2 node token for ``key``, signed ``age`` seconds ago (by ``signed_by``: a forgery)."""
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    unix_ns = time.time_ns() - int(age * 1e9)
    message = public + unix_ns.to_bytes(8, "big")
    return f"2:{public.hex()}:{unix_ns}:{(signed_by or key).sign(message).hex()}"


def test_node_tokens_and_headers_are_required_and_every_refusal_says_why() -> None:
    node, spare, stranger = (Ed25519PrivateKey.generate() for _ in range(3))
    keys = [k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
            for k in (node, spare)]
    with chipmock("--auth-token-key", keys[0], "--auth-token-key", keys[1], "--auth-token-max-age", "1m",
                  "--auth-header", "X-Api-Key=h3ader-s3cret") as chip:
        assert chip.model == (f"auth_token_key={keys[0]} auth_token_key={keys[1]} auth_token_max_age=60s "
                              "auth_header=x-api-key=***")  # the header's value is never printed

        def ping(token: str | None, header: str | None = "h3ader-s3cret") -> str:
            metadata = [(name, value) for name, value in (("x-beholder-node-auth-token", token),
                                                          ("x-api-key", header)) if value is not None]
            try:
                return chip.stub.Ping(pb.EmptyRequest(), metadata=metadata, timeout=CALL_TIMEOUT).message
            except grpc.RpcError as failure:
                assert failure.code() == grpc.StatusCode.UNAUTHENTICATED
                return failure.details()

        assert ping(_token(node)) == ping(_token(spare)) == "pong"
        assert ping(None) == "chipmock: no node token"
        assert ping(_token(stranger)) == "chipmock: node token from an unknown key"
        assert re.fullmatch(r"chipmock: stale node token: signed 12\d s ago, max age 60 s", ping(_token(node, age=120)))
        assert ping(_token(node, signed_by=stranger)) == "chipmock: bad node token signature"
        assert ping("2:zz") == "chipmock: malformed node token"
        assert ping(_token(node), header="wrong") == ping(_token(node), header=None) == \
            "chipmock: header x-api-key missing or wrong"
        token = _token(node)
        published = chip.stub.PublishBatch(_batch(_event("a")), metadata=[("x-beholder-node-auth-token", token),
                                                                          ("x-api-key", "h3ader-s3cret")],
                                           timeout=CALL_TIMEOUT)
        assert _errors(published) == [None]
    assert "chipmock auth: 3 calls admitted with 3 distinct node tokens" in chip.summary
    assert ("refused: bad node token signature=1 header x-api-key missing or wrong=2 malformed node token=1 "
            "no node token=1 node token from an unknown key=1 stale node token=1") in chip.summary
    assert "h3ader-s3cret" not in chip.summary


def test_an_internal_window_fails_publishes_as_a_registry_outage_does_while_pings_answer() -> None:
    with chipmock("--internal", "0s:1h") as chip:
        assert chip.model == "internal=0:3600s"
        assert chip.stub.Ping(pb.EmptyRequest(), timeout=CALL_TIMEOUT).message == "pong"
        failed = _failure(lambda: chip.stub.PublishBatch(_batch(_event("a")), timeout=CALL_TIMEOUT))
        assert (failed.code(), failed.details()) == (grpc.StatusCode.INTERNAL,
                                                     "chipmock: schema registry unreachable (internal window)")
