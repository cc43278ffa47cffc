"""What the store's errors say: the kind of a failed write."""

import pytest

from actors.adapters.store import Store
from actors.core.failures import StoreFailure
from actors.errors import StoreUnavailable


async def test_a_write_the_table_refuses_is_a_poison_store_error_with_its_sqlstate(database_url) -> None:
    store = Store(database_url)
    try:
        await store.insert_events(["twice"], [b"x"], owner="a", lease=60, spilled=False)
        with pytest.raises(StoreUnavailable) as info:
            await store.insert_events(["twice"], [b"x"], owner="a", lease=60, spilled=False)
    finally:
        store.close()
    assert (info.value.sqlstate, info.value.kind) == ("23505", StoreFailure.POISON)

