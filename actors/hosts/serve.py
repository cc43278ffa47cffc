"""The Trio side both host adapters share: run the one tree until the host asks it to stop."""

from __future__ import annotations

from collections.abc import Callable

import trio
from prometheus_client import CollectorRegistry

from ..config import EmitterConfig
from ..emitter import Emitter
from ..tree import open_emitter


async def serve(config: EmitterConfig | None, ready: Callable[[Emitter, trio.Nursery], None],
                 stop: trio.Event, registry: CollectorRegistry | None = None) -> None:
    """The Trio side of both adapters: run the tree until asked to stop."""
    async with open_emitter(config, registry=registry) as emitter, trio.open_nursery() as calls:
        ready(emitter, calls)
        await stop.wait()
        calls.cancel_scope.cancel()
