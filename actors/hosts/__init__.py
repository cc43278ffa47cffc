"""Adapters for hosts that are not Trio programs: asyncio services and plain threads.

Both are thin shells over :func:`open_emitter`: the same Trio tree runs, and
each call crosses into it. Nothing of the pipeline is written twice.

- asyncio: Trio runs in *guest mode* on the host's event loop (same thread,
  no second loop); ``await emitter.emit(...)`` from asyncio code runs the
  Trio ``emit`` as a task in the tree's nursery. Cancelling the asyncio caller
  cancels that task, and a failure of the tree fails the caller.
- threads: Trio runs in a background thread; ``emit`` blocks the calling
  thread until the event is committed.
"""

from __future__ import annotations

from .aio import AsyncioEmitter as AsyncioEmitter
from .aio import open_asyncio_emitter as open_asyncio_emitter
from .blocking import BlockingEmitter as BlockingEmitter
from .blocking import open_blocking_emitter as open_blocking_emitter
