"""chipmock's record of what it took, for checkers that trust nothing else (``--ids-file``)."""

from __future__ import annotations

import os
import threading


class IdsLog:
    """Appends ``<event id> <arrival, unix seconds> <peer>`` per produced event: an outside record of receipts.

    The peer (gRPC's ``ipv4:127.0.0.1:PORT``) tells which connection, so which
    client, sent it. One ``write`` per call, before the call is answered: a line is in the file
    (the page cache) before the client can hear the event was taken, so a
    SIGKILLed chipmock never answered an event its log lacks.
    """

    def __init__(self, path: str) -> None:
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._lock = threading.Lock()  # a handler still running after close() writes nothing

    def record(self, event_ids: list[str], arrived: float, peer: str) -> None:
        stamp = f" {arrived:.6f} {peer}\n"
        with self._lock:
            if event_ids and self._fd is not None:
                os.write(self._fd, "".join(event_id + stamp for event_id in event_ids).encode())

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
