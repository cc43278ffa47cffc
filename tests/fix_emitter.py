"""Emitter configurations for tests: real Postgres database, real chipmock endpoint."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from actors import EmitterConfig


@pytest.fixture
def make_config(database_url: str) -> Callable[..., EmitterConfig]:
    """``make_config(chip, **knobs)``: a config on this test's database, quick to react.

    The instance id is the default (host-pid), as a host's would be; the lease
    is the default too, so a row that waits for its lease fails a test's flush.
    """

    def _make(chip, **knobs) -> EmitterConfig:
        defaults = dict(
            database_url=database_url, chip_endpoint=chip.endpoint,
            scan_interval=0.1, sample_interval=0.1, retry_initial=0.02, retry_max=0.2,
            publish_timeout=2.0, shutdown_timeout=2.0,
        )
        return EmitterConfig(**{**defaults, **knobs})

    return _make
