"""The public face: exactly these names, so private modules can move freely."""

import actors


def test_public_names_are_pinned() -> None:
    public = {name for name in dir(actors) if not name.startswith("_")}
    modules = {"acker", "backlog", "backoff", "chip", "config", "dispatcher", "emitter", "errors", "events",
               "messages", "metrics", "persister", "postgres", "store", "supervisor", "hosts"}
    assert public - modules == {
        "open_emitter", "open_asyncio_emitter", "open_blocking_emitter", "Emitter", "EmitterConfig", "EmitterError", "BacklogFull", "EventTooLarge",
        "InvalidEvent", "ConfigError", "StoreUnavailable", "ChipRejected", "FlushTimeout",
        "EmitterClosed", "SupervisorGaveUp",
    }


def test_every_error_is_an_emitter_error() -> None:
    for name in ["BacklogFull", "EventTooLarge", "InvalidEvent", "ConfigError", "StoreUnavailable",
                 "ChipRejected", "FlushTimeout", "EmitterClosed", "SupervisorGaveUp"]:
        assert issubclass(getattr(actors, name), actors.EmitterError)
