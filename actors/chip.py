"""The gRPC client for Chip Ingress, usable from Trio.

grpcio's blocking stubs are driven through their ``future()`` form: the call
runs on gRPC's own threads and its completion wakes the Trio task, so many
publishes can be in flight without a worker thread each. Batches go out
pre-encoded (the stored bytes, framed by :func:`events.encode_batch`), never
parsed again on our side.
"""

from __future__ import annotations

import base64

import grpc
import trio

from chippb import chipingress_pb2 as pb

from .config import EmitterConfig
from .errors import ChipRejected

PUBLISH_BATCH = "/chipingress.pb.ChipIngress/PublishBatch"
PING = "/chipingress.pb.ChipIngress/Ping"
TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
             grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED, grpc.StatusCode.INTERNAL,
             grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED}
# Our configuration is wrong: retrying in a loop cannot help.
CONFIGURATION = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
                 grpc.StatusCode.UNIMPLEMENTED}


class CallFailed(Exception):
    """A whole PublishBatch failed. ``transient``: retrying the same request may succeed."""

    def __init__(self, code: str, detail: str, transient: bool) -> None:
        super().__init__(code, detail)
        self.code, self.detail, self.transient = code, detail, transient

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}"


def _wake(token: trio.lowlevel.TrioToken, done: trio.Event) -> None:
    try:
        token.run_sync_soon(done.set)
    except trio.RunFinishedError:  # the call outlived the Trio run; nobody waits for it
        pass


def _channel_options() -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", 16 * 1024 * 1024),
        ("grpc.max_send_message_length", 16 * 1024 * 1024),
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 1_000),
    ]


class ChipClient:
    """One channel to Chip. Create it inside Trio; ``close`` when done."""

    def __init__(self, config: EmitterConfig, endpoint: str) -> None:
        if config.chip_tls:
            root = config.chip_ca_file.read_bytes() if config.chip_ca_file else None
            self._channel = grpc.secure_channel(endpoint, grpc.ssl_channel_credentials(root), _channel_options())
        else:
            self._channel = grpc.insecure_channel(endpoint, _channel_options())
        self._metadata: tuple[tuple[str, str], ...] = ()
        if config.chip_username is not None:
            token = base64.b64encode(f"{config.chip_username}:{config.chip_password}".encode()).decode()
            self._metadata = (("authorization", f"Basic {token}"),)
        self._publish_batch = self._channel.unary_unary(
            PUBLISH_BATCH, request_serializer=None, response_deserializer=pb.PublishResponse.FromString,
        )
        self._ping = self._channel.unary_unary(
            PING, request_serializer=pb.EmptyRequest.SerializeToString,
            response_deserializer=pb.PingResponse.FromString,
        )
        self._timeout = config.publish_timeout
        self.endpoint = endpoint

    async def ping(self, timeout: float) -> str | None:
        """None if Chip answers; else why not. Raises :class:`ChipRejected` for bad credentials."""
        try:
            await self._call(self._ping, pb.EmptyRequest(), timeout)
        except CallFailed as exc:
            return str(exc)
        return None

    async def publish_batch(self, encoded_batch: bytes) -> pb.PublishResponse:
        """Send one pre-encoded ``CloudEventBatch``; raise :class:`CallFailed` or :class:`ChipRejected`."""
        return await self._call(self._publish_batch, encoded_batch, self._timeout)

    async def _call(self, method, request, timeout: float):
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        future = method.future(request, timeout=timeout, metadata=self._metadata)
        future.add_done_callback(lambda _f: _wake(token, done))
        try:
            await done.wait()
        finally:
            if not done.is_set():
                future.cancel()
        try:
            return future.result()
        except grpc.RpcError as exc:
            code = exc.code()
            detail = exc.details() or ""
            if code in CONFIGURATION:
                raise ChipRejected(f"Chip at {self.endpoint} refused the call: {code.name}: {detail}") from None
            raise CallFailed(code.name, detail, code in TRANSIENT) from None

    def close(self) -> None:
        self._channel.close()
