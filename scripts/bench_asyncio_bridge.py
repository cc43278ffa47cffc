"""Why the asyncio host runs Trio in guest mode, not under trio-asyncio: the cost of one call.

``python -m scripts.bench_asyncio_bridge`` times N calls from asyncio code into a
trivial Trio function both ways (needs the ``compare`` extra for trio-asyncio):

- guest mode (what ``open_asyncio_emitter`` does): Trio runs on the host's own
  asyncio loop; a call starts a Trio task and awaits an asyncio future.
- trio-asyncio: the host's asyncio code must itself run inside ``trio.run``
  under trio-asyncio's loop, and calls Trio with ``trio_as_aio``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

import trio


async def _trivial() -> int:
    await trio.lowlevel.checkpoint()
    return 1


def guest_mode(calls: int) -> float:
    async def host() -> float:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[tuple[trio.lowlevel.TrioToken, trio.Nursery]] = loop.create_future()
        done: asyncio.Future[None] = loop.create_future()
        stop = trio.Event()

        async def trio_main() -> None:
            async with trio.open_nursery() as nursery:
                ready.set_result((trio.lowlevel.current_trio_token(), nursery))
                await stop.wait()

        trio.lowlevel.start_guest_run(trio_main, run_sync_soon_threadsafe=loop.call_soon_threadsafe,
                                      done_callback=lambda _: done.set_result(None),
                                      host_uses_signal_set_wakeup_fd=True)
        token, nursery = await ready

        async def call() -> int:
            future: asyncio.Future[int] = loop.create_future()

            async def run() -> None:
                future.set_result(await _trivial())

            token.run_sync_soon(lambda: nursery.start_soon(run))
            return await future

        started = time.perf_counter()
        for _ in range(calls):
            await call()
        elapsed = time.perf_counter() - started
        token.run_sync_soon(stop.set)
        await done
        return elapsed

    return asyncio.run(host())


def under_trio_asyncio(calls: int) -> float:
    import trio_asyncio

    async def host_code() -> float:
        started = time.perf_counter()
        for _ in range(calls):
            await trio_asyncio.trio_as_aio(_trivial)()
        return time.perf_counter() - started

    async def main() -> float:
        async with trio_asyncio.open_loop():
            elapsed: float = await trio_asyncio.aio_as_trio(host_code)()
            return elapsed

    return trio.run(main)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    for name, bench in [("guest mode", guest_mode), ("trio-asyncio", under_trio_asyncio)]:
        try:
            per_call = [bench(args.calls) / args.calls * 1e6 for _ in range(args.rounds)]
        except ImportError as exc:
            print(f"{name:<13} not measured: {exc}", file=sys.stderr)
            continue
        print(f"{name:<13} median {statistics.median(per_call):6.1f} us per call "
              f"(range {min(per_call):.1f}-{max(per_call):.1f}, {args.rounds} x {args.calls:,} calls)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
