"""Emitter configurations for tests: real Postgres database, real chipmock endpoint."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import pytest

from actors import EmitterConfig
from tests.helpers import quick_config


@pytest.fixture
def make_config(database_url: str) -> Callable[..., EmitterConfig]:
    """``make_config(chip, **knobs)``: a config on this test's database, quick to react.

    The instance id is the default (host-pid), as a host's would be; the lease
    is the default too, so a row that waits for its lease fails a test's flush.
    """
    return partial(quick_config, database_url=database_url)
