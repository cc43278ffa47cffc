"""A threaded host (a WSGI app, a worker pool): emit() blocks the calling thread until committed.

    DATABASE_URL=postgresql://... CHIP_INGRESS_ENDPOINT=chip:50051 python examples/threaded_host.py
"""

import logging
from concurrent.futures import ThreadPoolExecutor

from actors import EmitterConfig, open_blocking_emitter


def main() -> None:
    # Frameworks with start-up / shut-down hooks call start() and close() instead of `with`.
    emitter = open_blocking_emitter(EmitterConfig.from_env()).start()
    try:
        with ThreadPoolExecutor(max_workers=4) as workers:
            ids = list(workers.map(lambda n: emitter.emit(f"job {n}".encode(), source="examples.threads",
                                                          type="job.done"), range(8)))
        print("committed", len(ids), "events")
        emitter.flush(timeout=30)
        print("delivered", emitter.statistics().delivered)
    finally:
        emitter.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
