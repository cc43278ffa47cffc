"""durable-emitter: ``emit()`` commits to Postgres; supervised Trio actors deliver to Chip Ingress.

The public face. Everything else in this package is private and may move.

The errors are imported here; every other name, and the ``outbox`` submodule
(events written in the host's own transaction), is imported on first use
(PEP 562), so ``import actors`` (and the CLI's ``--help``) does not load trio,
psycopg, grpc and prometheus_client. Type checkers and IDEs read the imports
under ``TYPE_CHECKING``, which name the same things.
"""

import typing as _typing
from importlib import import_module as _import_module
from importlib import metadata as _metadata

from .core.failures import StoreFailure as StoreFailure
from .errors import BacklogFull as BacklogFull
from .errors import ChipRejected as ChipRejected
from .errors import CommitOutcomeUnknown as CommitOutcomeUnknown
from .errors import ConfigError as ConfigError
from .errors import EmitterClosed as EmitterClosed
from .errors import EmitterError as EmitterError
from .errors import EmitterForked as EmitterForked
from .errors import EventTooLarge as EventTooLarge
from .errors import FlushTimeout as FlushTimeout
from .errors import InvalidEvent as InvalidEvent
from .errors import SchemaError as SchemaError
from .errors import StoreUnavailable as StoreUnavailable
from .errors import SupervisorGaveUp as SupervisorGaveUp
from .errors import UnknownDeadLetter as UnknownDeadLetter

if _typing.TYPE_CHECKING:
    from . import outbox as outbox
    from .config import EmitterConfig as EmitterConfig
    from .emitter import Emitter as Emitter
    from .hosts import AsyncioEmitter as AsyncioEmitter
    from .hosts import BlockingEmitter as BlockingEmitter
    from .hosts import open_asyncio_emitter as open_asyncio_emitter
    from .hosts import open_blocking_emitter as open_blocking_emitter
    from .statistics import EmitterStatistics as EmitterStatistics
    from .tree import open_emitter as open_emitter

# name -> the private module it lives in (tests/unit/test_public_api.py checks this against the imports above)
_LAZY = {
    "EmitterConfig": ".config",
    "Emitter": ".emitter",
    "AsyncioEmitter": ".hosts",
    "BlockingEmitter": ".hosts",
    "open_asyncio_emitter": ".hosts",
    "open_blocking_emitter": ".hosts",
    "EmitterStatistics": ".statistics",
    "open_emitter": ".tree",
}

# submodules served by the face ("from actors import outbox" works without this too; "actors.outbox" needs it)
_SUBMODULES = ("outbox",)

__all__ = [
    "BacklogFull", "ChipRejected", "ConfigError", "EmitterClosed", "EmitterError", "EmitterForked", "EventTooLarge",
    "FlushTimeout", "InvalidEvent", "SchemaError", "StoreUnavailable", "StoreFailure", "SupervisorGaveUp",
    "UnknownDeadLetter", "CommitOutcomeUnknown",
    *_LAZY, *_SUBMODULES,
]

if not _typing.TYPE_CHECKING:  # hidden from type checkers, so a misspelt name stays an error for them

    def __getattr__(name: str) -> object:
        module = _LAZY.get(name)
        if module is not None:
            value = getattr(_import_module(module, __name__), name)
        elif name in _SUBMODULES:
            value = _import_module(f".{name}", __name__)
        else:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        globals()[name] = value  # imported once: later lookups do not come here
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


try:
    __version__ = _metadata.version("durable-emitter")
except _metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
