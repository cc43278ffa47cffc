"""The public face: exactly these names, so private modules can move freely."""

import types

import actors


def test_public_names_are_pinned() -> None:
    public = {name for name in dir(actors)
              if not name.startswith("_") and not isinstance(getattr(actors, name), types.ModuleType)}
    assert public == {"EmitterStatistics",
        "open_emitter", "open_asyncio_emitter", "open_blocking_emitter", "Emitter", "EmitterConfig", "EmitterError", "BacklogFull", "EventTooLarge",
        "InvalidEvent", "ConfigError", "StoreUnavailable", "ChipRejected", "FlushTimeout",
        "EmitterClosed", "SupervisorGaveUp", "SchemaError",
    }


def test_every_error_is_an_emitter_error() -> None:
    for name in ["BacklogFull", "EventTooLarge", "InvalidEvent", "ConfigError", "StoreUnavailable",
                 "ChipRejected", "FlushTimeout", "EmitterClosed", "SupervisorGaveUp", "SchemaError"]:
        assert issubclass(getattr(actors, name), actors.EmitterError)
