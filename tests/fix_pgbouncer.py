"""Real PgBouncer for the tests: in front of the test server, in ``transaction`` or ``session`` mode.

The runner is the load runs' (``scripts/pgbouncer.py``): a free port on
127.0.0.1, ``auth_type = trust``, PgBouncer's defaults otherwise; stopped by
its pid after the test. Skips, saying why, only where pgbouncer is not installed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from scripts.pgbouncer import PgBouncer, pgbouncer_binary


@pytest.fixture
def start_pgbouncer(pg_server_url: str) -> Iterator[Callable[..., PgBouncer]]:
    """``start_pgbouncer(mode, **settings)``: a PgBouncer before the server of every test database."""
    if pgbouncer_binary() is None:
        pytest.skip("pgbouncer is not installed (Debian: apt-get install pgbouncer; .ci/run installs it)")
    bouncers: list[PgBouncer] = []

    def _start(mode: str, **settings: str | int) -> PgBouncer:
        bouncer = PgBouncer(pg_server_url, mode, **settings)
        bouncers.append(bouncer)
        return bouncer

    yield _start
    for bouncer in bouncers:
        bouncer.stop()
