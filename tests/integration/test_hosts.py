"""asyncio and threaded hosts emit durably through the same Trio tree."""

import asyncio
import threading

import pytest

from actors import open_asyncio_emitter, open_blocking_emitter
from tests.helpers import ids_from_threads, pending_ids, query


def test_asyncio_host_emits_and_flushes(chip, make_config, database_url) -> None:
    async def host() -> set[str]:
        async with open_asyncio_emitter(make_config(chip)) as emitter:
            ids = set(await asyncio.gather(*(emitter.emit(f"e{i}", source="wf", type="t") for i in range(50))))
            await emitter.flush(timeout=30)
            return ids

    ids = asyncio.run(host())
    assert len(ids) == 50
    assert chip.counters.seen(ids) == ids
    assert pending_ids(database_url) == set()


def test_asyncio_errors_reach_the_asyncio_caller(chip, make_config) -> None:
    from actors import InvalidEvent

    async def host() -> None:
        async with open_asyncio_emitter(make_config(chip)) as emitter:
            with pytest.raises(InvalidEvent):
                await emitter.emit(b"x", source="bad source", type="t")

    asyncio.run(host())


def test_cancelling_an_asyncio_caller_cancels_the_trio_side(start_chipmock, make_config) -> None:
    from chipmock import ChipModel

    down = start_chipmock(ChipModel(failure_rate=1.0))

    async def host() -> None:
        async with open_asyncio_emitter(make_config(down)) as emitter:
            await emitter.emit(b"x", source="wf", type="t")
            flushing = asyncio.ensure_future(emitter.flush(timeout=60))  # cannot finish: Chip is down
            await asyncio.sleep(0)
            flushing.cancel()
            with pytest.raises(asyncio.CancelledError):
                await flushing
            for _ in range(500):  # the cancellation crosses into Trio within a few loop turns
                if emitter.calls_in_flight == 0:
                    break
                await asyncio.sleep(0.01)
            assert emitter.calls_in_flight == 0, "the Trio-side flush kept running"

    asyncio.run(asyncio.wait_for(host(), timeout=30))


def test_blocking_host_emits_from_many_threads(chip, make_config, database_url) -> None:
    with open_blocking_emitter(make_config(chip)) as emitter:
        ids = ids_from_threads(lambda: [emitter.emit(f"e{i}".encode(), source="wf", type="t") for i in range(20)], 4)
        emitter.flush(timeout=30)
    assert len(set(ids)) == 80
    assert chip.counters.seen(ids) == set(ids)
    assert pending_ids(database_url) == set()


def test_blocking_host_start_failure_is_raised_in_the_caller(chip) -> None:
    from actors import EmitterConfig, StoreUnavailable

    config = EmitterConfig(database_url="postgresql://u:p@127.0.0.1:1/x", chip_endpoint=chip.endpoint,
                           start_timeout=1.0)  # how long refused connections are waited on
    with pytest.raises(StoreUnavailable), open_blocking_emitter(config):
        pass


def test_host_adapters_have_the_emitters_signatures() -> None:
    """Typed like Emitter, so a host's type checker sees the same keywords (emit(body, **kwargs) hid them)."""
    import inspect

    from actors import Emitter
    from actors.hosts import AsyncioEmitter, BlockingEmitter

    for method in ("emit", "emit_many", "flush", "statistics", "set_chip_signer"):
        expected = inspect.signature(getattr(Emitter, method))
        for adapter in (AsyncioEmitter, BlockingEmitter):
            assert inspect.signature(getattr(adapter, method)) == expected, (adapter.__name__, method)


def test_blocking_host_without_with_start_statistics_close(chip, make_config, database_url) -> None:
    emitter = open_blocking_emitter(make_config(chip)).start()
    try:
        event_id = emitter.emit(b"x", source="wf", type="t", attributes={"node": "n1"})
        emitter.flush(timeout=30)
        stats = emitter.statistics()
    finally:
        emitter.close()
    emitter.close()  # idempotent
    assert stats.emitted == 1 and stats.delivered == 1
    assert chip.counters.seen([event_id]) == {event_id} and pending_ids(database_url) == set()
    from actors import EmitterClosed

    with pytest.raises(EmitterClosed):
        emitter.emit(b"late", source="wf", type="t")


def test_asyncio_host_statistics(chip, make_config) -> None:
    async def host() -> int:
        async with open_asyncio_emitter(make_config(chip)) as emitter:
            await emitter.emit(b"x", source="wf", type="t")
            return emitter.statistics().emitted

    assert asyncio.run(host()) == 1


def _fail_the_tree_soon(database_url: str, role: str) -> None:
    """Take DELETE away: the acker's deletes fail for good, it crashes past max_restarts, and the tree fails."""
    query(database_url, f'REVOKE DELETE ON chip_durable_events FROM "{role}"')


def test_asyncio_calls_get_the_tree_failure_never_a_hang(chip, make_config, database_url, limited_role_url) -> None:
    from actors import EmitterClosed, EmitterError, SupervisorGaveUp

    url, role = limited_role_url
    config = make_config(chip, database_url=url, max_restarts=1, restart_period=60, restart_delay=0.05)
    errors: list[BaseException] = []

    async def host() -> None:
        async with open_asyncio_emitter(config) as emitter:
            _fail_the_tree_soon(database_url, role)
            for i in range(100_000):  # bounded; ends at the first failed call
                try:
                    await asyncio.gather(*(emitter.emit(f"e{i}-{j}", source="wf", type="t") for j in range(20)))
                except EmitterError as exc:  # EmitterClosed; or, for a commit cut short, EmitterError
                    errors.append(exc)
                    break
            with pytest.raises(EmitterClosed) as later:
                await emitter.emit(b"after the failure", source="wf", type="t")
            errors.append(later.value)

    with pytest.raises(BaseExceptionGroup) as failed:
        asyncio.run(asyncio.wait_for(host(), timeout=60))
    assert failed.value.subgroup(SupervisorGaveUp) is not None
    assert len(errors) == 2 and isinstance(errors[1].__cause__, SupervisorGaveUp)


def test_blocking_calls_get_the_tree_failure_never_a_hang(chip, make_config, database_url, limited_role_url) -> None:
    from actors import EmitterClosed, EmitterError, SupervisorGaveUp

    url, role = limited_role_url
    config = make_config(chip, database_url=url, max_restarts=1, restart_period=60, restart_delay=0.05)
    errors: list[BaseException] = []
    with pytest.raises(BaseExceptionGroup) as failed, open_blocking_emitter(config) as emitter:
        _fail_the_tree_soon(database_url, role)

        def work() -> None:
            for i in range(100_000):  # bounded; ends at the first failed call
                try:
                    emitter.emit(f"e{i}".encode(), source="wf", type="t")
                except EmitterError as exc:  # EmitterClosed; or, for a commit cut short, EmitterError
                    errors.append(exc)
                    return

        threads = [threading.Thread(target=work) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in threads), "a call hung after the tree failed"
        with pytest.raises(EmitterClosed) as later:
            emitter.emit(b"after the failure", source="wf", type="t")
        errors.append(later.value)
    assert failed.value.subgroup(SupervisorGaveUp) is not None
    assert len(errors) == 5 and isinstance(later.value.__cause__, SupervisorGaveUp)


def _verifying_chip(start_chipmock):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from chipmock.auth import AuthPolicy

    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes_raw()
    return key, public, start_chipmock(auth=AuthPolicy(token_keys=(public,)))


def test_an_asyncio_host_sets_an_asyncio_signer_after_start(start_chipmock, make_config, database_url) -> None:
    key, public, chip = _verifying_chip(start_chipmock)

    async def sign(message: bytes) -> bytes:  # the host's keystore, asyncio code on the host's loop
        await asyncio.sleep(0.01)
        assert asyncio.get_running_loop() is loop
        return key.sign(message)

    async def host() -> set[str]:
        async with open_asyncio_emitter(make_config(chip, chip_auth_public_key=public.hex())) as emitter:
            ids = set(await emitter.emit_many([b"a", b"b"], source="wf", type="t"))
            emitter.set_chip_signer(sign)
            await emitter.flush(timeout=30)
            return ids

    loop = asyncio.new_event_loop()
    try:
        ids = loop.run_until_complete(host())
    finally:
        loop.close()
    assert chip.counters.seen(ids) == ids and pending_ids(database_url) == set()


def test_a_blocking_host_sets_a_signer_after_start(start_chipmock, make_config, database_url) -> None:
    key, public, chip = _verifying_chip(start_chipmock)
    with open_blocking_emitter(make_config(chip, chip_auth_public_key=public.hex())) as emitter:
        event_id = emitter.emit(b"x", source="wf", type="t")
        emitter.set_chip_signer(key.sign)
        emitter.flush(timeout=30)
    assert chip.counters.seen([event_id]) == {event_id}


def test_an_asyncio_signer_cancelled_on_its_loop_fails_the_signing_not_the_emitter(
        start_chipmock, make_config, database_url) -> None:
    key, public, chip = _verifying_chip(start_chipmock)

    async def cancelled(message: bytes) -> bytes:  # its task is cancelled (the host's loop cancelling its tasks)
        raise asyncio.CancelledError

    async def sign(message: bytes) -> bytes:
        return key.sign(message)

    async def host() -> tuple[set[str], str]:
        async with open_asyncio_emitter(make_config(chip, chip_auth_public_key=public.hex())) as emitter:
            ids = set(await emitter.emit_many([b"a", b"b"], source="wf", type="t"))
            emitter.set_chip_signer(cancelled)
            async with asyncio.timeout(20):  # the next probe signs with it (retry_max 0.2 s)
                # Polls statistics, which no event signals.
                while (paused_by := emitter.statistics().paused_by) != "SIGNER_FAILED":  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
            emitter.set_chip_signer(sign)
            await emitter.flush(timeout=30)
            return ids, paused_by

    loop = asyncio.new_event_loop()
    try:
        ids, paused_by = loop.run_until_complete(host())
    finally:
        loop.close()
    assert paused_by == "SIGNER_FAILED"  # a failed signing: delivery waited, nothing crashed
    assert chip.counters.seen(ids) == ids and pending_ids(database_url) == set()
