"""`python -m chipmock` as a user runs it."""

import re
import signal
import subprocess
import sys

import grpc

from chippb import chipingress_pb2 as pb
from chippb import chipingress_pb2_grpc as pb_grpc
from chippb import cloudevent_pb2 as ce
from tests.helpers import ChildOutput


def test_bad_option_values_get_a_usage_error() -> None:
    for args in (["--latency", "soon"], ["--failure-rate", "1.5"], ["--outage", "10s"]):
        done = subprocess.run([sys.executable, "-m", "chipmock", *args], capture_output=True, text=True, timeout=30)
        assert done.returncode == 2, args
        assert "usage: chipmock" in done.stderr and "error:" in done.stderr
        assert "Traceback" not in done.stderr


def test_a_duration_without_a_unit_is_an_error_that_shows_the_units() -> None:
    done = subprocess.run([sys.executable, "-m", "chipmock", "--latency", "50"], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 2 and "argument --latency: '50' has no unit: write 50s or 50ms" in done.stderr


def test_serves_until_sigint_then_prints_a_summary() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "chipmock", "--port", "0", "--metrics-port", "-1", "--latency", "10ms"],
        stdout=subprocess.PIPE, text=True,
    )
    output = ChildOutput(proc.stdout)
    try:
        banner = output.line(timeout=30, what="the banner")
        endpoint = re.search(r"listening on (\S+)", banner).group(1)
        with grpc.insecure_channel(endpoint) as channel:
            stub = pb_grpc.ChipIngressStub(channel)
            event = ce.CloudEvent(id="a", source="s", spec_version="1.0", type="t")
            stub.PublishBatch(pb.CloudEventBatch(events=[event, event]), timeout=10)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=15)
        out = output.rest(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert "2 events received, 1 unique, 1 duplicates" in out


def _chipmock(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "chipmock", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_signals_while_stopping_never_wedge_it() -> None:
    """A signal handler that set an Event the main thread waited on deadlocked on a second signal.

    The race is narrow: these bursts caught the old code in about one run in three.
    """
    for _ in range(4):
        proc = _chipmock("--port", "0", "--metrics-port", "0", "--latency", "50ms")
        output = ChildOutput(proc.stdout)
        try:
            assert "listening on" in output.line(timeout=30, what="the banner")
            for sig in [signal.SIGINT, signal.SIGTERM] * 100:
                proc.send_signal(sig)
            proc.wait(timeout=15)
            out = output.rest(timeout=15)
        finally:
            proc.kill()
            proc.stderr.close()  # not read
        assert proc.returncode == 0 and "chipmock stopped" in out


def test_a_port_in_use_is_refused_with_one_line_naming_it() -> None:
    first = _chipmock("--port", "0", "--metrics-port", "0")
    try:
        banner = ChildOutput(first.stdout).line(timeout=30, what="the banner")
        grpc_port = re.search(r"listening on \S+:(\d+)", banner).group(1)
        metrics_port = re.search(r"127.0.0.1:(\d+)/metrics", banner).group(1)
        for args, port in [(["--port", grpc_port, "--metrics-port", "-1"], grpc_port),
                           (["--port", "0", "--metrics-port", metrics_port], metrics_port)]:
            second = _chipmock(*args)
            out, err = second.communicate(timeout=30)
            assert second.returncode == 2, (args, out, err)
            assert err.count("\n") == 1 and f":{port}" in err and "Traceback" not in err, err
        assert "gRPC" in subprocess.run([sys.executable, "-m", "chipmock", "--port", grpc_port, "--metrics-port",
                                         "-1"], capture_output=True, text=True, timeout=30).stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=15)
        first.stderr.close()  # not read
