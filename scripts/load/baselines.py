"""The baselines ``--compare`` runs beside a scenario: a naive outbox, and the raw-Postgres limit."""

from __future__ import annotations

import os
import threading
import time
import uuid

import psycopg

from chippb import chipingress_pb2_grpc as pb_grpc
from chippb import cloudevent_pb2 as ce

from .chip import ChipProcess, chip_args
from .progress import Progress


def naive(url: str, events: int, concurrency: int, size: int, latency: float, progress: Progress) -> dict:
    """The proof of concept's shape, written plainly: per event INSERT+commit, unary Publish, DELETE."""
    import grpc

    chip = ChipProcess(*chip_args(latency))
    body = os.urandom(size)
    done = [0]
    lock = threading.Lock()

    def worker(count: int) -> None:
        with psycopg.connect(url, autocommit=True) as conn, grpc.insecure_channel(chip.endpoint) as channel:
            stub = pb_grpc.ChipIngressStub(channel)
            for _ in range(count):
                event = ce.CloudEvent(id=str(uuid.uuid4()), source="load", spec_version="1.0", type="event",
                                      binary_data=body)
                conn.execute("INSERT INTO chip_durable_events (id, payload, lease_owner, lease_expires_at) "
                             "VALUES (%s, %s, 'naive', now())", (event.id, event.SerializeToString()))
                stub.Publish(event, timeout=5)
                conn.execute("DELETE FROM chip_durable_events WHERE id = %s", (event.id,))
                with lock:
                    done[0] += 1

    try:
        threads = [threading.Thread(target=worker, args=(events // concurrency,)) for _ in range(concurrency)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        while any(t.is_alive() for t in threads):  # each worker stops after its share of ``events``
            progress.show("baseline naive", done[0], events, f"{done[0]:,} delivered")
            time.sleep(0.25)
        took = time.perf_counter() - started
        progress.done()
        return {"implementation": "naive", "events": done[0], "end_to_end_per_s": round(done[0] / took, 1)}
    finally:
        chip.stop()


def limit(url: str, events: int, size: int, progress: Progress) -> dict:
    """Batched binary COPY of the same rows, then batched DELETE: no gRPC at all."""
    body = os.urandom(size)
    batch = 1000
    with psycopg.connect(url, autocommit=True) as conn:
        started = time.perf_counter()
        written = 0
        while written < events:
            ids = [str(uuid.uuid4()) for _ in range(min(batch, events - written))]
            with conn.cursor() as cursor, cursor.copy(
                    "COPY chip_durable_events (id, payload, lease_owner, lease_expires_at) FROM STDIN") as copy:
                for event_id in ids:
                    copy.write_row((event_id, body, "limit", "-infinity"))
            conn.execute("DELETE FROM chip_durable_events WHERE id = ANY(%s)", (ids,))
            written += len(ids)
            progress.show("baseline limit", written, events, f"{written:,} rows")
        took = time.perf_counter() - started
    progress.done()
    return {"implementation": "limit (COPY+DELETE, no gRPC)", "events": written,
            "end_to_end_per_s": round(written / took, 1)}
