"""`python -m chipmock` as a user runs it."""

import re
import signal
import subprocess
import sys

import grpc

from chippb import chipingress_pb2 as pb
from chippb import chipingress_pb2_grpc as pb_grpc
from chippb import cloudevent_pb2 as ce


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
    try:
        banner = proc.stdout.readline()
        endpoint = re.search(r"listening on (\S+)", banner).group(1)
        with grpc.insecure_channel(endpoint) as channel:
            stub = pb_grpc.ChipIngressStub(channel)
            event = ce.CloudEvent(id="a", source="s", spec_version="1.0", type="t")
            stub.PublishBatch(pb.CloudEventBatch(events=[event, event]), timeout=10)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert "2 events received, 1 unique, 1 duplicates" in out
