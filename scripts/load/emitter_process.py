"""An emitter instance in its own process (``python -m scripts.load.emitter_process``), and its handle.

The program opens one emitter (configured from the environment, as any host
is), prints ``ready <t>``, optionally emits ``--rate`` events/s from
``--emit-from`` until ``--emit-until`` and prints ``emitted <n> <failed>``,
then delivers what the table holds until SIGTERM or ``--seconds``. Times are
CLOCK_MONOTONIC, one clock for every process on this machine, so the parent
can line the emits up with chipmock's outage window and time a drain from the
instance's start. :class:`EmitterProcess` starts it, reads those lines, and
stops it by its pid.
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

import trio

from scripts import ROOT

from .cpu import process_cpu


@dataclass(frozen=True)
class EmitPlan:
    """Emits the process makes: ``rate``/s from ``concurrency`` callers, between two monotonic times."""

    rate: float
    start: float
    stop: float
    concurrency: int = 10
    size: int = 256


class EmitterProcess:
    """The program above, started now; ``ready`` is when its emitter was open (monotonic seconds)."""

    def __init__(self, url: str, endpoint: str, *, seconds: float, emit: EmitPlan | None = None,
                 env: dict[str, str] | None = None, ready_timeout: float = 60.0) -> None:
        self.instance_id = f"load-process-{os.getpid()}-{time.monotonic_ns()}"
        self._stderr = tempfile.NamedTemporaryFile(prefix="emitter-process-", suffix=".log")  # noqa: SIM115
        command = [sys.executable, "-m", "scripts.load.emitter_process", "--seconds", str(seconds)]
        if emit:
            command += ["--rate", str(emit.rate), "--emit-from", str(emit.start), "--emit-until", str(emit.stop),
                        "--concurrency", str(emit.concurrency), "--size", str(emit.size)]
        self.spawned = time.monotonic()
        self.proc = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=self._stderr, text=True,
            env={**os.environ, "DATABASE_URL": url, "CHIP_INGRESS_ENDPOINT": endpoint,
                 "DURABLE_EMITTER_INSTANCE_ID": self.instance_id, "DURABLE_EMITTER_LOG_INTERVAL": "1h",
                 **(env or {})})
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read_lines, name="emitter-process-stdout", daemon=True).start()
        try:
            self.ready = float(self.expect("ready", ready_timeout)[0])
        except BaseException:
            self.stop()
            raise

    def _read_lines(self) -> None:
        for line in self.proc.stdout:  # ends when the process closes its stdout
            self._lines.put(line)

    def expect(self, word: str, timeout: float) -> list[str]:
        """The fields after ``word`` on the next line it prints; RuntimeError (with its log) otherwise."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            line = ""
        if not line.startswith(word + " "):
            self._stderr.seek(0)
            log = self._stderr.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"the emitter process printed {line.strip()!r}, not {word!r}: {log}")
        return line.split()[1:]

    def cpu(self) -> float | None:
        return process_cpu(self.proc.pid)

    def stop(self) -> None:
        """SIGTERM by pid (its emitter closes), SIGKILL after 15 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        self._stderr.close()

    def __enter__(self) -> EmitterProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def run(args: argparse.Namespace) -> None:
    from actors import EmitterConfig, open_emitter

    from .measure import Latencies, paced_emits

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with open_emitter(EmitterConfig.from_env()) as emitter, trio.open_nursery() as nursery:
            async def stop_on_signal() -> None:
                async for _ in signals:
                    nursery.cancel_scope.cancel()

            nursery.start_soon(stop_on_signal)
            print(f"ready {time.monotonic():.6f}", flush=True)
            with trio.move_on_after(args.seconds):
                if args.rate:
                    await trio.sleep(max(0.0, args.emit_from - time.monotonic()))
                    errors: list[str] = []
                    emitted = await paced_emits(emitter, args.rate, max(0.0, args.emit_until - time.monotonic()),
                                                args.concurrency, os.urandom(args.size), Latencies(), errors)
                    print(f"emitted {emitted} {len(errors)}", flush=True)
                await trio.sleep_forever()
            nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    from actors.logs import configure_logging

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, required=True, help="stop after this long at most")
    parser.add_argument("--rate", type=float, default=0.0, help="events/s to emit (default: none, deliver only)")
    parser.add_argument("--emit-from", type=float, default=0.0, help="CLOCK_MONOTONIC time to start emitting")
    parser.add_argument("--emit-until", type=float, default=0.0, help="CLOCK_MONOTONIC time to stop emitting")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args(argv)
    configure_logging("json", level=30)
    trio.run(run, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

