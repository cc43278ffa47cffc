"""Polling a condition that no event can signal (a row in another process's table), with a deadline."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from ..errors import StoreUnavailable


async def poll_until(done: Callable[[], Awaitable[bool]], timeout: float, *, first_delay: float = 0.005,
                     max_delay: float = 0.1) -> str | None:
    """Check ``done`` until it is true (return None) or ``timeout`` passes (return the last error, or "").

    The delay between checks doubles from ``first_delay`` to ``max_delay``: quick
    answers stay quick, long waits cost at most ten checks a second. A
    :class:`StoreUnavailable` from a check only delays the answer.
    """
    last_error = ""
    delay = first_delay
    with trio.move_on_after(timeout):
        while True:
            try:
                if await done():
                    return None
            except StoreUnavailable as exc:
                last_error = str(exc)
            await trio.sleep(delay)
            delay = min(delay * 2, max_delay)
    return last_error
