"""Fixtures come from the tests/fix_*.py plugins; plain helpers from tests/helpers.py."""

import threading

import pytest
import pytest_timeout

pytest_plugins = ["tests.fix_postgres", "tests.fix_chip", "tests.fix_emitter", "tests.fix_processes", "tests.fix_proxy",
                  "tests.fix_replication", "tests.fix_pgbouncer"]


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings) -> bool | None:
    """pytest-timeout's "thread" method (see pyproject.toml), with the test's name in the stack dump.

    Its own dump does not name it: a hung Trio test's coroutine is suspended,
    so no thread's stack shows it, and ``-q`` prints no test names.
    """
    if settings.method != "thread":
        return None

    def expire() -> None:
        threading.main_thread().name = f"MainThread, running {item.nodeid}"  # the dump's heading
        pytest_timeout.timeout_timer(item, settings)  # dumps every thread's stack, then ends the process

    timer = threading.Timer(settings.timeout, expire)
    timer.name = f"timeout {item.nodeid}"
    timer.start()
    item.cancel_timeout = lambda: (timer.cancel(), timer.join())  # what pytest-timeout's cancel hook calls
    return True
