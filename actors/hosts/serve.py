"""The Trio side both host adapters share: run the one tree until the host asks it to stop."""

from __future__ import annotations

from collections.abc import Callable

import trio
from prometheus_client import CollectorRegistry

from ..config import EmitterConfig
from ..emitter import Emitter
from ..tree import open_emitter


async def serve(config: EmitterConfig | None, ready: Callable[[Emitter, trio.Nursery], None],
                stop: trio.Event, registry: CollectorRegistry | None = None,
                failed: Callable[[BaseException], None] | None = None) -> None:
    """The Trio side of both adapters: run the tree until asked to stop.

    ``failed`` hears of a failure of the tree before the run ends, so the host
    can fail calls with it at once rather than after the run has wound down.
    """
    try:
        async with open_emitter(config, registry=registry) as emitter, trio.open_nursery() as calls:
            ready(emitter, calls)
            await stop.wait()
            calls.cancel_scope.cancel()
    except BaseException as exc:
        if failed is not None:
            failed(exc)
        raise
