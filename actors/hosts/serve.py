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
    # The host's calls outlive the tree's shutdown, which answers each of them (committed, not written,
    # or unknown): cancelled before it, a call whose event the persister still committed heard "closed".
    # The tree's own failure is raised as it is, outside the calls' nursery (no exception group).
    failure: BaseException | None = None
    async with trio.open_nursery() as calls:
        try:
            async with open_emitter(config, registry=registry) as emitter:
                ready(emitter, calls)
                await stop.wait()
        except BaseException as exc:
            failure = exc
            if failed is not None:
                failed(exc)
        calls.cancel_scope.cancel()  # what still runs once the tree is gone (a flush) ends now
    if failure is not None:
        raise failure
