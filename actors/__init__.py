"""durable-emitter: ``emit()`` commits to Postgres; supervised Trio actors deliver to Chip Ingress.

The public face. Everything else in this package is private and may move.
"""

from importlib import metadata as _metadata

from .config import EmitterConfig as EmitterConfig
from .emitter import Emitter as Emitter
from .errors import BacklogFull as BacklogFull
from .errors import ChipRejected as ChipRejected
from .errors import ConfigError as ConfigError
from .errors import EmitterClosed as EmitterClosed
from .errors import EmitterError as EmitterError
from .errors import EventTooLarge as EventTooLarge
from .errors import FlushTimeout as FlushTimeout
from .errors import InvalidEvent as InvalidEvent
from .errors import SchemaError as SchemaError
from .errors import StoreUnavailable as StoreUnavailable
from .errors import SupervisorGaveUp as SupervisorGaveUp
from .hosts import open_asyncio_emitter as open_asyncio_emitter
from .hosts import open_blocking_emitter as open_blocking_emitter
from .statistics import EmitterStatistics as EmitterStatistics
from .tree import open_emitter as open_emitter

try:
    __version__ = _metadata.version("durable-emitter")
except _metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
