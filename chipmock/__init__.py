"""chipmock: a gRPC stand-in for Chip Ingress with configurable latency and failures.

Never used by the library on its own: tests, ``just run-local`` and the load
scripts start it when no real Chip endpoint is configured.
"""

from .model import ChipModel as ChipModel
from .model import Outage as Outage
from .server import ChipMockServer as ChipMockServer
from .server import start as start
