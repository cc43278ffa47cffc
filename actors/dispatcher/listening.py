"""Outbox notifications ring the doorbell, so rows a host committed are claimed at once, not at the next scan.

The outbox (:mod:`actors.outbox`) notifies its schema's channel in the
writing transaction; Postgres delivers that at the commit. This task listens
on a connection of its own (:mod:`..adapters.listener`) and rings the
doorbell: recovery then scans at once, and claims outbox
rows beside spilled and lapsed ones, oldest lapse first, through the same
publish slots as fresh emits. Rings fold into one while a scan runs (the
doorbell holds one), so a burst of commits costs a scan or two, not one each.

A broken connection is reopened with backoff; meanwhile, and wherever LISTEN
cannot work (a pooler in transaction mode: the tree starts no listener when
``session_liveness`` is off), the scan every ``scan_interval`` finds the rows.
Each (re)connection rings once, for what was committed while nobody listened.
Logged: the first LISTEN, a failure when it starts, and when it works again.
"""

from __future__ import annotations

import random

import trio

from ..adapters.listener import Listener
from ..core.backoff import Backoff
from ..errors import StoreUnavailable
from ..logs import FailureLog, get_logger

log = get_logger("durable_emitter.dispatcher")


def ring(bell: trio.MemorySendChannel[None]) -> None:
    try:
        bell.send_nowait(None)
    except trio.WouldBlock:
        pass  # already rung: one scan covers every row committed before it starts


async def ring_on_notifications(listener: Listener, bell: trio.MemorySendChannel[None], backoff: Backoff,
                                rng: random.Random) -> None:
    """Listen until cancelled; ring ``bell`` for every batch of notifications, and after every (re)connection."""
    trouble = FailureLog(log, "outbox notifications: LISTEN failing; outbox rows wait for the scan",
                         "outbox notifications: listening again")
    attempt = 0
    first = True
    try:
        while True:
            try:
                await listener.listen()
                if first:
                    log.info("listening for outbox notifications", channel=listener.channel)
                    first = False
                trouble.worked()
                ring(bell)
                while True:
                    await listener.wait()
                    attempt = 0  # delivered: the connection holds, the next failure starts the backoff afresh
                    ring(bell)
            except StoreUnavailable as exc:
                listener.close()
                trouble.failed(exc)
                await trio.sleep(backoff.delay(attempt, rng))
                attempt += 1
    finally:
        listener.close()
