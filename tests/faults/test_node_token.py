"""Chip's node token as Chainlink nodes send it, against a real chipmock that verifies it.

Unknown keys, stale tokens, bad signatures, rotation past the TTL, a signer set after
start, a signer that fails or hangs: emits stay durable, nothing is dead-lettered,
delivery waits ("refused") and resumes by itself once a good key or signer is there.
chipmock's own record (ids received, tokens admitted and refused) decides, and every
log record and error these tests produce is searched for the key, tokens and header secret.
"""

import logging
import subprocess
import threading
import time
from pathlib import Path

import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from actors import open_emitter
from actors.adapters.chip import ChipClient
from actors.adapters.chip_auth import ChipCredentials
from actors.core.events import encode_batch
from actors.core.failures import CallFailed
from actors.core.node_token import format_token, signed_message
from chipmock import ChipModel
from chipmock.auth import AuthPolicy
from tests.helpers import dead_letters, pending_ids, wait_until

HEADER_SECRET = "h3ader-s3cret-value"
EVENTS = 200


def _public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@pytest.fixture
def openssl_key(tmp_path: Path) -> tuple[Path, Ed25519PrivateKey]:
    """A node key as operators make one: ``openssl genpkey -algorithm ed25519`` (PEM, PKCS#8)."""
    path = tmp_path / "node.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(path)], check=True, timeout=30)
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return path, key


class Secrets:
    """What must never show: private keys (PEM and seed), every token chipmock saw signed by them, the header
    secret. Checked after each test against every log record (message and fields) and every error text."""

    def __init__(self) -> None:
        self.keys: list[Ed25519PrivateKey] = []
        self.chips: list = []
        self.errors: list[str] = []

    def texts(self) -> list[str]:
        found = [HEADER_SECRET]
        for key in self.keys:
            pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
            found += [key.private_bytes_raw().hex(), pem.splitlines()[1]]
            public = _public(key)
            for chip in self.chips:
                for signer, unix_ns in chip.auth_counts[1]:
                    if signer == public:  # ed25519 is deterministic: the very token that was sent
                        signature = key.sign(signed_message(public, unix_ns))
                        found += [format_token(public, unix_ns, signature), signature.hex()]
        return found


@pytest.fixture
def secrets(caplog):
    caplog.set_level(logging.DEBUG)
    kept = Secrets()
    yield kept
    records = " ".join(f"{record.getMessage()} {record.__dict__!r}"
                       for phase in ("setup", "call") for record in caplog.get_records(phase))
    text = records + " ".join(kept.errors)
    leaked = [secret[:12] + "..." for secret in kept.texts() if secret in text]
    assert not leaked, f"secrets in logs or errors: {leaked}"


def _node_and_chip(start_chipmock, secrets: Secrets):
    """A node key (searched for afterwards) and a chipmock that admits only its tokens."""
    key = Ed25519PrivateKey.generate()
    secrets.keys.append(key)
    chip = start_chipmock(auth=AuthPolicy(token_keys=(_public(key),)))
    secrets.chips.append(chip)
    return key, chip


def _watched(secrets: Secrets, emitter) -> str:
    """The emitter's statistics as a text the secrets search reads too."""
    text = repr(emitter.statistics()) + " ".join(str(s) for m in emitter.registry.collect() for s in m.samples)
    secrets.errors.append(text)
    return text


async def test_an_openssl_key_delivers_everything_and_every_call_carries_a_valid_token(
        start_chipmock, make_config, database_url, openssl_key, secrets) -> None:
    path, key = openssl_key
    secrets.keys.append(key)
    chip = start_chipmock(auth=AuthPolicy(token_keys=(_public(key),), headers=(("x-api-key", HEADER_SECRET),)))
    secrets.chips.append(chip)
    config = make_config(chip, chip_auth_key_file=path, chip_auth_headers={"X-Api-Key": HEADER_SECRET},
                         publish_batch_size=20)
    async with open_emitter(config) as emitter:
        ids = set(await emitter.emit_many([f"event {i}".encode() for i in range(EVENTS)], source="wf", type="t"))
        await emitter.flush(timeout=30)
        _watched(secrets, emitter)
    assert chip.counters.seen(ids) == ids
    admitted, tokens, refused = chip.auth_counts
    calls = chip.counters.snapshot().calls
    assert refused == {} and admitted >= calls >= EVENTS // 20  # every call, Ping included, carried a good one
    assert len(tokens) == 1  # signed once, not per call


async def test_an_unknown_key_keeps_every_event_and_the_right_key_then_delivers_all(
        start_chipmock, make_config, database_url, tmp_path, secrets) -> None:
    wrong, right = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    secrets.keys += [wrong, right]
    chip = start_chipmock(auth=AuthPolicy(token_keys=(_public(right),)))
    secrets.chips.append(chip)
    files = {}
    for name, key in (("wrong", wrong), ("right", right)):
        files[name] = tmp_path / f"{name}.hex"
        files[name].write_text(key.private_bytes_raw().hex())
    async with open_emitter(make_config(chip, chip_auth_key_file=files["wrong"])) as emitter:  # starts all the same
        ids = set(await emitter.emit_many([f"event {i}".encode() for i in range(50)], source="wf", type="t"))
        await wait_until(lambda: emitter.statistics().delivery == "refused", what="delivery refused")
        assert emitter.statistics().paused_by == "UNAUTHENTICATED"
        _watched(secrets, emitter)
    assert chip.counters.seen(ids) == set() and dead_letters(database_url) == {}
    assert pending_ids(database_url) == ids  # every emit committed
    assert chip.auth_counts[2].get("node token from an unknown key", 0) >= 2
    async with open_emitter(make_config(chip, chip_auth_key_file=files["right"])) as emitter:
        await wait_until(lambda: not pending_ids(database_url), what="the backlog delivered")
    assert chip.counters.seen(ids) == ids and dead_letters(database_url) == {}


async def test_a_signer_for_another_key_is_refused_as_a_bad_signature_and_nothing_dead_lettered(
        start_chipmock, make_config, database_url, secrets) -> None:
    key, chip = _node_and_chip(start_chipmock, secrets)
    impostor = Ed25519PrivateKey.generate()
    secrets.keys.append(impostor)
    config = make_config(chip, chip_auth_public_key=_public(key).hex(), chip_auth_signer=impostor.sign)
    async with open_emitter(config) as emitter:
        ids = set(await emitter.emit_many([b"a", b"b", b"c"], source="wf", type="t"))
        await wait_until(lambda: emitter.statistics().paused_by == "UNAUTHENTICATED", what="delivery refused")
        _watched(secrets, emitter)
    assert chip.auth_counts[2].get("bad node token signature", 0) >= 1 and chip.auth_counts[0] == 0
    assert chip.counters.seen(ids) == set() and dead_letters(database_url) == {} and pending_ids(database_url) == ids


async def test_a_signer_set_after_start_resumes_delivery_and_signs_off_the_event_loop(
        start_chipmock, make_config, database_url, secrets) -> None:
    key, chip = _node_and_chip(start_chipmock, secrets)
    signing_threads = []

    def sign(message: bytes) -> bytes:  # a keystore's plain, blocking call
        signing_threads.append(threading.current_thread())
        return key.sign(message)

    async with open_emitter(make_config(chip, chip_auth_public_key=_public(key).hex())) as emitter:
        ids = set(await emitter.emit_many([f"event {i}".encode() for i in range(50)], source="wf", type="t"))
        await wait_until(lambda: emitter.statistics().paused_by == "SIGNER_UNAVAILABLE", what="waiting for a signer")
        assert emitter.statistics().delivery == "refused" and chip.counters.seen(ids) == set()
        emitter.set_chip_signer(sign)
        await emitter.flush(timeout=30)
        assert emitter.statistics().delivery == "up"
        _watched(secrets, emitter)
    assert chip.counters.seen(ids) == ids and dead_letters(database_url) == {}
    assert signing_threads and threading.main_thread() not in signing_threads


@pytest.mark.slow
async def test_a_signer_that_fails_or_hangs_pauses_delivery_and_a_working_one_resumes_it(
        start_chipmock, make_config, database_url, secrets) -> None:
    key, chip = _node_and_chip(start_chipmock, secrets)
    released = threading.Event()
    entered = {"async": 0, "blocking": 0}

    def failing(message: bytes) -> bytes:
        raise RuntimeError(f"keystore locked; the key was {key.private_bytes_raw().hex()}")  # must not be shown

    async def hanging(message: bytes) -> bytes:
        entered["async"] += 1
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    def blocking(message: bytes) -> bytes:  # a keystore call that never returns (until the test ends)
        entered["blocking"] += 1
        released.wait(60)
        return key.sign(message)

    async def working(message: bytes) -> bytes:
        return key.sign(message)

    config = make_config(chip, chip_auth_public_key=_public(key).hex(), chip_auth_signer=failing)
    try:
        async with open_emitter(config) as emitter:
            ids = set(await emitter.emit_many([f"event {i}".encode() for i in range(50)], source="wf", type="t"))
            await wait_until(lambda: emitter.statistics().paused_by == "SIGNER_FAILED", what="the signer failing")
            emitter.set_chip_signer(hanging)
            # Each attempt gets 5 s, is abandoned, and the next probe asks again: never wedged.
            await wait_until(lambda: entered["async"] >= 2, what="a second attempt after the first hung")
            emitter.set_chip_signer(blocking)
            await wait_until(lambda: entered["blocking"] == 1, what="the blocking signer called")
            assert chip.counters.seen(ids) == set() and emitter.statistics().delivery == "refused"
            emitter.set_chip_signer(working)  # while the blocking one still holds its thread
            await emitter.flush(timeout=30)
            _watched(secrets, emitter)
    finally:
        released.set()  # the abandoned signing thread ends
    assert chip.counters.seen(ids) == ids and dead_letters(database_url) == {}
    assert entered["blocking"] == 1  # its thread was never asked again while it hung
    assert chip.auth_counts[2] == {}  # no call went out without a token


async def test_a_hung_blocking_signer_holds_one_thread_however_many_calls_ask_it(
        start_chipmock, make_config, secrets) -> None:
    key, chip = _node_and_chip(start_chipmock, secrets)
    released, entered = threading.Event(), []

    def blocking(message: bytes) -> bytes:  # a keystore call that hangs (until the test ends)
        entered.append(message)
        released.wait(60)
        return key.sign(message)

    chip_client = ChipClient(make_config(chip, chip_auth_public_key=_public(key).hex(), chip_auth_signer=blocking),
                             chip.endpoint)
    try:
        # Each call gives the signer its own deadline (0.5 s), then abandons it: past two more calls, a
        # thread per call would have entered it twice more by the end (the last half a second ago).
        failures = [str(await chip_client.probe(0.5)) for _ in range(3)]
        assert failures == ["SIGNER_FAILED: the signer did not answer within 0.5 s"] * 3
        assert len(entered) == 1  # the later calls waited for the one thread the hung signer holds
    finally:
        released.set()  # the abandoned signing thread ends
        chip_client.close()


async def test_the_token_is_signed_again_only_once_older_than_the_ttl(start_chipmock, make_config, autojump_clock,
                                                                      secrets) -> None:
    key, chip = _node_and_chip(start_chipmock, secrets)
    signed = []

    async def sign(message: bytes) -> bytes:  # async: nothing for the virtual clock to jump over
        signed.append(message)
        return key.sign(message)

    config = make_config(chip, chip_auth_public_key=_public(key).hex(), chip_auth_signer=sign, chip_auth_ttl=900.0)
    chip_client = ChipClient(config, chip.endpoint)
    try:
        for _ in range(3):
            assert await chip_client.probe(5.0) is None
            await trio.sleep(299)  # 3 x 299 s: still within the TTL
        assert len(signed) == 1 and len(chip.auth_counts[1]) == 1
        await trio.sleep(4)  # now past it
        assert await chip_client.probe(5.0) is None
        assert await chip_client.probe(5.0) is None
        assert len(signed) == 2 and len(chip.auth_counts[1]) == 2
        assert chip.auth_counts[0] == 5 and chip.auth_counts[2] == {}
    finally:
        chip_client.close()
    secrets.errors.append(repr(signed))


async def test_a_signer_replaced_while_the_old_one_signs_is_used_from_the_next_call_on(
        start_chipmock, make_config, autojump_clock, secrets) -> None:
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    secrets.keys += [old, new]
    chip = start_chipmock(auth=AuthPolicy(token_keys=(_public(new),)))  # Chip knows only the new key
    secrets.chips.append(chip)
    old_may_answer = trio.Event()

    async def old_signer(message: bytes) -> bytes:  # a keystore slow to answer, for the key being replaced
        await old_may_answer.wait()
        return old.sign(message)

    async def new_signer(message: bytes) -> bytes:
        return new.sign(message)

    config = make_config(chip, chip_auth_public_key=_public(old).hex(), chip_auth_signer=old_signer)
    chip_client = ChipClient(config, chip.endpoint)
    answers = []

    async def probe() -> None:
        answers.append(await chip_client.probe(5.0))

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(probe)
            await trio.testing.wait_all_tasks_blocked()  # the old signer is signing
            chip_client.credentials.set_signer(new_signer, _public(new))
            old_may_answer.set()  # and answers after it was replaced: that token must not be used
        await probe()
    finally:
        chip_client.close()
    assert answers == [None, None]  # both calls carried the new key's token
    admitted, tokens, refused = chip.auth_counts
    assert refused == {} and {key for key, _ in tokens} == {_public(new)}


async def test_a_token_chip_refuses_is_signed_anew_at_the_next_call_not_after_the_ttl(
        start_chipmock, make_config, autojump_clock, secrets) -> None:
    key, chip = _node_and_chip(start_chipmock, secrets)
    ahead_ns = [20 * 60 * 10**9]  # the host's clock is 20 minutes fast: Chip reads its token as signed in the future

    async def sign(message: bytes) -> bytes:
        return key.sign(message)

    config = make_config(chip, chip_auth_public_key=_public(key).hex(), chip_auth_signer=sign)
    chip_client = ChipClient(config, chip.endpoint)
    chip_client.credentials = ChipCredentials(config, chip.endpoint, wall_ns=lambda: time.time_ns() + ahead_ns[0])
    try:
        refused = await chip_client.probe(5.0)
        assert refused is not None and refused.code == "UNAUTHENTICATED"
        ahead_ns[0] = 0  # the clock is put right (NTP): the next probe's token is good
        assert await chip_client.probe(5.0) is None
    finally:
        chip_client.close()
    admitted, tokens, refusals = chip.auth_counts
    assert refusals == {"node token signed in the future": 1} and admitted == 1 and len(tokens) == 1


async def test_signing_counts_in_the_calls_deadline(start_chipmock, make_config, autojump_clock, secrets) -> None:
    """open_emitter's 2 s Ping and publish_deadline's margin of two publish_timeouts hold with a slow signer."""
    key, chip = _node_and_chip(start_chipmock, secrets)
    chip.set_model(ChipModel(latency=1.0))  # publishes answer after 1 s (of real time)
    signing_takes = [float("inf")]

    async def sign(message: bytes) -> bytes:  # a keystore that hangs, then one that takes 1.5 s (virtual)
        await trio.sleep(signing_takes[0])
        return key.sign(message)

    config = make_config(chip, chip_auth_public_key=_public(key).hex(), chip_auth_signer=sign, publish_timeout=2.0)
    chip_client = ChipClient(config, chip.endpoint)
    try:
        started = trio.current_time()
        hung = await chip_client.probe(2.0)
        assert trio.current_time() - started == pytest.approx(2.0)  # not the signer's own 5 s
        assert hung is not None and str(hung) == "SIGNER_FAILED: the signer did not answer within 2 s"
        signing_takes[0] = 1.5
        with pytest.raises(CallFailed) as late:
            await chip_client.publish_batch(encode_batch([]))  # 0.5 s left of 2 s: Chip's 1 s is too long
        assert late.value.code == "DEADLINE_EXCEEDED"
    finally:
        chip_client.close()
