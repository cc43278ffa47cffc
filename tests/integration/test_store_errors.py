"""What the store's errors say: the kind of a failed write, and the ids a replay did not know."""

import pytest

from actors.adapters.operations import Operations
from actors.adapters.store import Store
from actors.core.events import Rejection
from actors.core.failures import StoreFailure
from actors.errors import EmitterError, StoreUnavailable, UnknownDeadLetter
from tests.helpers import dead_letters


async def test_a_write_the_table_refuses_is_a_poison_store_error_with_its_sqlstate(database_url) -> None:
    store = Store(database_url)
    try:
        await store.insert_events(["twice"], [b"x"], owner="a", lease=60, spilled=False)
        with pytest.raises(StoreUnavailable) as info:
            await store.insert_events(["twice"], [b"x"], owner="a", lease=60, spilled=False)
    finally:
        store.close()
    assert (info.value.sqlstate, info.value.kind) == ("23505", StoreFailure.POISON)


async def test_replaying_an_unknown_id_names_it_and_moves_nothing(database_url) -> None:
    store = Operations(database_url)
    try:
        await store.insert_events(["known"], [b"x"], owner="a", lease=60, spilled=False)
        await store.dead_letter([Rejection("known", "EXPIRED", "too old")], owner="a")
        with pytest.raises(UnknownDeadLetter) as info:
            await store.replay_dead_letters(["known", "nope", "nor-this"])
    finally:
        store.close()
    assert info.value.ids == ("nope", "nor-this")
    assert str(info.value) == "no dead letter with id nope, nor-this; nothing was replayed"
    assert isinstance(info.value, EmitterError) and isinstance(info.value, KeyError)
    assert set(dead_letters(database_url)) == {"known"}
