"""Real gRPC for the tests: a chipmock server in this process, on a free port."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

import chipmock
from chipmock import ChipMockServer, ChipModel


@pytest.fixture
def start_chipmock() -> Iterator[Callable[..., ChipMockServer]]:
    """Call with a ChipModel (and start() keywords) to get a running chipmock."""
    servers: list[ChipMockServer] = []

    def _start(model: ChipModel | None = None, **kwargs) -> ChipMockServer:
        server = chipmock.start(model or ChipModel(), **kwargs)
        servers.append(server)
        return server

    yield _start
    for server in servers:
        server.stop(grace=0)


@pytest.fixture
def chip(start_chipmock) -> ChipMockServer:
    """A chipmock with no latency and no failures, keeping payloads for inspection."""
    return start_chipmock(keep_payloads=True)
