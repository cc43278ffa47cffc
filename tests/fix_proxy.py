"""``start_proxy``: a TCP proxy (``scripts/proxy.py``) between the emitter and Postgres or Chip, closed after the test."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from scripts.proxy import Cut, TcpProxy

__all__ = ["Cut", "TcpProxy", "start_proxy"]


@pytest.fixture
def start_proxy() -> Iterator[Callable[[str], TcpProxy]]:
    """``start_proxy(target)``: a proxy to ``host:port`` or a Unix socket, on a free local port, closed after the test."""
    proxies: list[TcpProxy] = []

    def _start(target: str) -> TcpProxy:
        proxy = TcpProxy(target)
        proxies.append(proxy)
        return proxy

    yield _start
    for proxy in proxies:
        proxy.close()
