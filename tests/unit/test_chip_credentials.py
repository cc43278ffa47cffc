"""Signing the node token once for concurrent calls, on Trio's virtual clock; no network (the signer is ours)."""

import trio
import trio.testing
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from actors.adapters.chip_auth import ChipCredentials
from actors.config import EmitterConfig
from actors.core.failures import CallFailed
from actors.core.node_token import TOKEN_HEADER

KEY = Ed25519PrivateKey.generate()
PUBLIC = KEY.public_key().public_bytes_raw()


def _credentials(signer) -> ChipCredentials:
    return ChipCredentials(EmitterConfig(chip_endpoint="127.0.0.1:1", chip_auth_public_key=PUBLIC.hex(),
                                         chip_auth_signer=signer))


async def _metadata_or_error(credentials: ChipCredentials, into: list) -> None:
    try:
        into.append(await credentials.metadata())
    except CallFailed as failed:
        into.append(failed)


async def test_callers_that_waited_for_a_failed_signing_each_get_their_own_error(autojump_clock) -> None:
    entered = []

    async def failing(message: bytes) -> bytes:
        entered.append(message)
        await trio.sleep(1)  # the others queue up behind this signing meanwhile
        raise RuntimeError("keystore locked")

    credentials = _credentials(failing)
    answers: list = []
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(_metadata_or_error, credentials, answers)
    assert len(entered) == 1  # one signing for all three
    assert [failed.code for failed in answers] == ["SIGNER_FAILED"] * 3
    assert len({id(failed) for failed in answers}) == 3  # one exception raised in three tasks mixes their tracebacks


async def test_a_signing_cut_short_leaves_no_older_failure_for_those_waiting_behind_it(autojump_clock) -> None:
    signing_tasks = []

    async def failing_then_hanging_then_working(message: bytes) -> bytes:
        signing_tasks.append(trio.lowlevel.current_task())
        if len(signing_tasks) == 1:
            raise RuntimeError("keystore locked")
        if len(signing_tasks) == 2:
            await trio.sleep_forever()
        return KEY.sign(message)

    credentials = _credentials(failing_then_hanging_then_working)
    first: list = []
    await _metadata_or_error(credentials, first)
    assert isinstance(first[0], CallFailed)  # the first signing failed: that failure is remembered
    scopes, answers = {}, []

    async def caller() -> None:
        with trio.CancelScope() as scope:
            scopes[trio.lowlevel.current_task()] = scope
            await _metadata_or_error(credentials, answers)

    async with trio.open_nursery() as nursery:
        for _ in range(2):  # both arrive before the second signing starts; one signs, the other waits for it
            nursery.start_soon(caller)
        await trio.testing.wait_all_tasks_blocked()
        scopes[signing_tasks[1]].cancel()  # the signing caller is cancelled (its publish, at a close)
    (answer,) = answers
    assert not isinstance(answer, CallFailed), answer  # not the first signing's failure: it signed itself
    assert len(signing_tasks) == 3 and dict(answer)[TOKEN_HEADER].startswith(f"2:{PUBLIC.hex()}:")
