"""The gRPC client for Chip Ingress, usable from Trio.

Each call is grpcio's blocking call on a thread from Trio's cache of worker
threads (reused, so a call costs a hand-off, not a thread start). grpcio's
``future()`` form, used before, starts a thread to drive the channel whenever
the number of calls in flight rises from zero, which between bursts was every
call: about 300 us each, and up to 3 ms during which the event loop (and every
waiting emit) stood still. A cancelled call is abandoned to its thread and ends
at its deadline (``publish_timeout``, within the lease margin of
``publish_deadline``), or when the channel closes; its events may still reach
Chip, so they may be delivered twice: at least once, as with any cancelled call. Batches go out pre-encoded (the
stored bytes, framed by :func:`events.encode_batch`), never parsed again on our
side.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import grpc
import trio

from chippb import chipingress_pb2 as pb

from ..config import EmitterConfig
from ..core.failures import CREDENTIAL_CODES, SIGNER_CODES, CallFailed, retry_hint
from ..errors import ChipRejected
from .chip_auth import ChipCredentials

PUBLISH_BATCH = "/chipingress.pb.ChipIngress/PublishBatch"
PING = "/chipingress.pb.ChipIngress/Ping"
_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


def _channel_options(config: EmitterConfig) -> list[tuple[str, int]]:
    """Upstream's sizes and keepalive; reconnects back off no longer than a second (or ``retry_max``).

    Keepalive pings every 10 s, with or without calls in flight, so a half-open
    connection is found while idle, not by the next publish's deadline (Chip, and
    chipmock, permit pings every 5 s). grpc's own reconnect backoff grows to 120 s,
    which after a long outage made delivery resume up to two minutes after Chip was back;
    a second keeps the drain's start within about a second of Chip answering again.
    """
    return [
        ("grpc.max_receive_message_length", 16 * 1024 * 1024),
        ("grpc.max_send_message_length", 16 * 1024 * 1024),
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 1_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.initial_reconnect_backoff_ms", max(100, int(config.retry_initial * 1000))),
        ("grpc.min_reconnect_backoff_ms", max(100, int(config.retry_initial * 1000))),
        ("grpc.max_reconnect_backoff_ms", max(100, int(min(config.retry_max, 1.0) * 1000))),
    ]


@dataclass(frozen=True, slots=True)
class NotReady:
    """Chip cannot take events yet, at start: the warning to log, and Chip's answer."""

    message: str
    error: str


class ChipClient:
    """One channel to Chip. Create it inside Trio; ``close`` when done."""

    def __init__(self, config: EmitterConfig, endpoint: str) -> None:
        if config.chip_tls:
            root = config.chip_ca_file.read_bytes() if config.chip_ca_file else None
            self._channel = grpc.secure_channel(endpoint, grpc.ssl_channel_credentials(root), _channel_options(config))
        else:
            self._channel = grpc.insecure_channel(endpoint, _channel_options(config))
        self.credentials = ChipCredentials(config, endpoint)
        self._publish_batch: grpc.UnaryUnaryMultiCallable[bytes, pb.PublishResponse] = self._channel.unary_unary(
            PUBLISH_BATCH, request_serializer=None, response_deserializer=pb.PublishResponse.FromString,
        )
        self._ping: grpc.UnaryUnaryMultiCallable[pb.EmptyRequest, pb.PingResponse] = self._channel.unary_unary(
            PING, request_serializer=pb.EmptyRequest.SerializeToString,
            response_deserializer=pb.PingResponse.FromString,
        )
        self._timeout = config.publish_timeout
        # Its own threads: a host's use of Trio's default limiter cannot hold up delivery (+1: the probe).
        self._threads = trio.CapacityLimiter(config.publishes_in_flight + 1)
        self.endpoint = endpoint

    async def ping(self, timeout: float) -> NotReady | None:
        """At start: None if Chip answers; else what to say and why. Raises :class:`ChipRejected` for bad
        basic-auth credentials. A node token Chip refuses (its key not known yet) or cannot be signed yet
        (no signer) does not stop the start: events wait in the table until Chip takes the token."""
        failed = await self.probe(timeout, wait_for_ready=False)
        if failed is None:
            return None
        if failed.code in CREDENTIAL_CODES and not self.credentials.uses_node_token:
            raise ChipRejected(f"Chip at {self.endpoint} refused the call: {failed}")
        if failed.code in CREDENTIAL_CODES or failed.code in SIGNER_CODES:
            return NotReady("Chip does not take this node's token yet; events will wait in the table", str(failed))
        return NotReady("Chip does not answer yet; events will wait in the table", str(failed))

    async def probe(self, timeout: float, *, wait_for_ready: bool = True) -> CallFailed | None:
        """One Ping: None if Chip answers, else how it failed.

        ``wait_for_ready``: while the channel is reconnecting, wait (up to ``timeout``) for it
        instead of failing at once, so delivery resumes as soon as a connection is up again.
        """
        try:
            await self._call(self._ping, pb.EmptyRequest(), timeout, wait_for_ready=wait_for_ready)
        except CallFailed as exc:
            return exc
        return None

    async def publish_batch(self, encoded_batch: bytes, timeout: float | None = None) -> pb.PublishResponse:
        """Send one pre-encoded ``CloudEventBatch`` within ``timeout`` (``publish_timeout`` by default);
        raise :class:`CallFailed` (the failure classifies itself)."""
        return await self._call(self._publish_batch, encoded_batch, self._timeout if timeout is None else timeout)

    async def _call(self, method: grpc.UnaryUnaryMultiCallable[_Request, _Response], request: _Request,
                    timeout: float, *, wait_for_ready: bool = False) -> _Response:
        started = trio.current_time()
        metadata = await self.credentials.metadata(within=timeout)  # signs only when the token aged out
        timeout -= trio.current_time() - started  # signing is part of the call: its deadline holds
        call = partial(method, request, timeout=timeout, metadata=metadata, wait_for_ready=wait_for_ready)
        try:
            return await trio.to_thread.run_sync(call, abandon_on_cancel=True, limiter=self._threads)
        except grpc.RpcError as exc:
            trailing = exc.trailing_metadata() if isinstance(exc, grpc.Call) else None
            code = exc.code().name
            if code == "UNAUTHENTICATED":
                self.credentials.refused(metadata)  # the next call signs anew: the TTL need not pass first
            raise CallFailed(code, exc.details() or "", retry_after=retry_hint(trailing or ())) from None

    def close(self) -> None:
        self._channel.close()
