"""Backoff, restart intensity, claim sizing and byte-limited splitting: pure decisions."""

import random

import pytest

from actors.backoff import Backoff
from actors.config import EmitterConfig
from actors.dispatcher import claim_limit, split_by_bytes
from actors.events import framed_size
from actors.messages import Outgoing
from actors.supervisor import RestartIntensity


def test_backoff_grows_exponentially_to_its_cap_with_full_jitter() -> None:
    backoff = Backoff(initial=0.1, multiplier=2, cap=1.0, rng=random.Random(1))
    ceilings = []
    for _ in range(6):
        ceilings.append(backoff.ceiling())
        delay = backoff.next_delay()
        assert 0 <= delay <= ceilings[-1]
    assert ceilings == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


def test_backoff_jitter_spreads_delays() -> None:
    delays = {Backoff(1.0, 2, 10, rng=random.Random(seed)).next_delay() for seed in range(20)}
    assert len(delays) == 20 and min(delays) < 0.3 and max(delays) > 0.7


def test_restart_intensity_allows_max_restarts_per_period() -> None:
    intensity = RestartIntensity(max_restarts=2, period=10)
    assert intensity.allow(0) and intensity.allow(1)
    assert not intensity.allow(2)  # third within 10 s
    fresh = RestartIntensity(max_restarts=2, period=10)
    assert fresh.allow(0) and fresh.allow(1) and fresh.allow(10.5)  # the first has aged out


def test_claim_limit_keeps_a_batch_under_the_request_cap() -> None:
    config = EmitterConfig(publish_batch_size=500, max_request_bytes=1_000_000, max_event_bytes=500_000)
    assert claim_limit(config, 1000) == 500
    assert claim_limit(config, 100_000) == 9
    assert claim_limit(config, 10_000_000) == 1


def test_split_by_bytes_never_exceeds_the_cap_except_for_one_large_item() -> None:
    items = [Outgoing(str(i), b"x" * size, 0.0) for i, size in enumerate([40, 40, 40, 200, 10])]
    chunks = split_by_bytes(items, 100)
    assert [[item.event_id for item in chunk] for chunk in chunks] == [["0", "1"], ["2"], ["3"], ["4"]]
    for chunk in chunks:
        assert len(chunk) == 1 or sum(framed_size(i.payload) for i in chunk) <= 100
    assert split_by_bytes([], 100) == []


def test_backlog_resync_keeps_commits_made_while_the_table_was_counted() -> None:
    from actors.backlog import Backlog

    backlog = Backlog(limit=20)
    mark = backlog.changes
    backlog.add(5)  # committed while the count ran: the count did not see these
    backlog.resync(15, mark)
    assert backlog.pending == 20
    backlog.remove(3)
    assert backlog.pending == 17
