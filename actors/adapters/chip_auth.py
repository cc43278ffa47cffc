"""What every call to Chip carries: basic auth, static headers, and the node token, signed when it ages.

The token (see :mod:`core.node_token`) is signed once and reused on every call
until it is older than ``chip_auth_ttl``; then the first call to need it signs
a new one while concurrent calls wait for that one signing. A signer may be a
keystore outside the process: a plain function runs on a worker thread of its
own (one at a time, so a hung signer holds one thread, not one per attempt), a
coroutine function on Trio, and either gets 5 s, or the call's deadline if
sooner (signing counts in the call's deadline). Until a signer is there, or
while it fails, calls fail as ``SIGNER_UNAVAILABLE`` / ``SIGNER_FAILED``, which
pause delivery in the ``refused`` state: emits keep committing, nothing is
dead-lettered, and the next probe after a working signer resumes delivery. A
signer replaced while it signs is not used after, whatever it returns; a token
Chip answers UNAUTHENTICATED is signed anew at the next call (a probe).

``cryptography`` is imported only to read a key file, so hosts without node
auth never load it. No key, token or header value reaches a log or an error.
"""

from __future__ import annotations

import base64
import inspect
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import trio

from ..config import EmitterConfig
from ..core.credentials import plaintext_problem
from ..core.failures import CallFailed
from ..core.node_token import (
    SIGNATURE_BYTES,
    SIGNING_DEADLINE,
    TOKEN_HEADER,
    format_token,
    needs_refresh,
    public_key_from_hex,
    signed_message,
)
from ..errors import ConfigError

Signer = Callable[[bytes], bytes | Awaitable[bytes]]
Metadata = tuple[tuple[str, str], ...]
KEY_FILE = "CHIP_INGRESS_AUTH_KEY_FILE (chip_auth_key_file)"


def load_key_file(path: Path) -> tuple[bytes, Signer]:
    """The public key and a signer from an ed25519 private key file: PEM (PKCS#8, as ``openssl genpkey
    -algorithm ed25519`` writes it) or the 32-byte seed as 64 hex characters. Raises :class:`ConfigError`
    naming the setting and the path, never the contents."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{KEY_FILE}: cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    text = data.strip()
    try:
        if text.startswith(b"-----BEGIN"):
            key = serialization.load_pem_private_key(text, password=None)
        else:
            key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(text.decode("ascii")))
    except (ValueError, TypeError, UnicodeDecodeError):
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{KEY_FILE}: {path} is not an unencrypted ed25519 private key "
                          "(PEM PKCS#8, or the 32-byte seed as 64 hex characters)")
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return public, key.sign


class ChipCredentials:
    """The metadata of every call. Made with the client; ``set_signer`` may come later, from the host."""

    def __init__(self, config: EmitterConfig, endpoint: str | None = None, *,
                 wall_ns: Callable[[], int] = time.time_ns) -> None:
        # A signer set later must not send a token where the configuration would not have (the check
        # at construction saw no token then): the verdict on this endpoint is kept for set_signer.
        self._plaintext = plaintext_problem(endpoint or config.chip_endpoint, tls=config.chip_tls,
                                            plaintext_allowed=config.chip_auth_plaintext)
        static: list[tuple[str, str]] = []
        if config.chip_username is not None:
            basic = base64.b64encode(f"{config.chip_username}:{config.chip_password}".encode()).decode()
            static.append(("authorization", f"Basic {basic}"))
        static.extend((name.lower(), value) for name, value in (config.chip_auth_headers or {}).items())
        self._static: Metadata = tuple(static)
        self._public_key: bytes | None = None
        self._sign: Signer | None = None
        if config.chip_auth_key_file is not None:
            self._public_key, self._sign = load_key_file(config.chip_auth_key_file)
        elif config.chip_auth_public_key is not None:
            self._public_key, self._sign = public_key_from_hex(config.chip_auth_public_key), config.chip_auth_signer
        self.uses_node_token = self._public_key is not None  # a token goes on every call
        self._ttl = config.chip_auth_ttl
        self._wall_ns = wall_ns
        self._metadata = self._static
        self._signed_at: tuple[float, int] | None = None  # (Trio's clock, unix ns) when the token was signed
        self._refreshing = trio.Lock()
        self._attempts = 0  # signings tried: a caller that waited for one uses its outcome
        self._failure: CallFailed | None = None
        self._generation = 0  # signers set so far: what a signing for an earlier one returns is not used
        self._signing_thread = trio.CapacityLimiter(1)

    def set_signer(self, sign: Signer, public_key: bytes | None = None) -> None:
        """Sign the node token with ``sign`` from now on (for ``public_key``, if given); the next call signs.

        A signing still under way for the signer before is not used, whatever it returns.
        """
        if not callable(sign):
            raise ConfigError("the Chip signer must be a callable that signs bytes")
        if self._plaintext is not None:
            raise ConfigError(self._plaintext)
        if public_key is not None:
            if len(public_key) != 32:
                raise ConfigError("the Chip signer's public key must be the 32 raw ed25519 bytes")
            self._public_key = public_key
        if self._public_key is None:
            raise ConfigError("set_chip_signer needs the public key it signs for: chip_auth_public_key, "
                              "or public_key=")
        self._sign, self.uses_node_token = sign, True
        self._generation += 1
        self._signed_at, self._failure, self._metadata = None, None, self._static
        self._signing_thread = trio.CapacityLimiter(1)  # a hung signer before keeps its thread, not this one

    def refused(self, sent: Metadata) -> None:
        """Chip answered UNAUTHENTICATED to a call that carried ``sent``: that token is not signed again
        only after the TTL but at the next call, so a key Chip learns or a clock put right takes effect
        at the next probe (a refusal pauses delivery, and probes back off: no signing per call)."""
        if sent is self._metadata and self._signed_at is not None:
            self._signed_at, self._metadata = None, self._static

    async def metadata(self, within: float = SIGNING_DEADLINE) -> Metadata:
        """What the next call sends; signs a new token first when the last one is older than the TTL.

        ``within``: the call's own deadline; the token is there within it, or 5 s if sooner (waiting for
        another call's signing included). Raises :class:`CallFailed` (``SIGNER_UNAVAILABLE``,
        ``SIGNER_FAILED``) when no token can be made.
        """
        if not self.uses_node_token or not self._stale():
            return self._metadata
        within = min(within, SIGNING_DEADLINE)
        deadline = trio.current_time() + within
        attempt = self._attempts
        with trio.move_on_at(deadline):
            async with self._refreshing:
                while self._stale():
                    failure = self._failure
                    if self._attempts != attempt and failure is not None:
                        # The signing this caller waited for failed: no second try for it, but its own
                        # exception (one instance raised in several tasks would gather their tracebacks).
                        raise CallFailed(failure.code, failure.detail)
                    self._attempts += 1
                    self._failure = None  # a signing cut short (its caller cancelled) leaves no older one
                    generation = self._generation
                    try:
                        token, signed_at = await self._signed_token(deadline, within)
                    except CallFailed as failed:
                        if generation != self._generation:
                            continue  # the signer was replaced meanwhile: the new one signs
                        self._failure = failed
                        raise
                    if generation == self._generation:  # else replaced while signing: the new one signs
                        self._signed_at, self._metadata = signed_at, (*self._static, (TOKEN_HEADER, token))
                return self._metadata
        raise _too_slow(within)  # waiting for another call's signing

    def _stale(self) -> bool:
        """Older than the TTL by Trio's clock or by the wall clock (which also runs while a host sleeps)."""
        if self._signed_at is None:
            return True
        clock, wall = self._signed_at
        return (needs_refresh(clock, trio.current_time(), self._ttl)
                or needs_refresh(wall / 1e9, self._wall_ns() / 1e9, self._ttl))

    async def _signed_token(self, deadline: float, within: float) -> tuple[str, tuple[float, int]]:
        """A new token by ``deadline``, and when it was signed (Trio's clock, unix ns)."""
        sign, public_key = self._sign, self._public_key
        if sign is None or public_key is None:
            raise CallFailed("SIGNER_UNAVAILABLE", "no signer for Chip's node token yet (the host sets one with "
                                                   "Emitter.set_chip_signer)")
        unix_ns = self._wall_ns()
        message = signed_message(public_key, unix_ns)
        clock = trio.current_time()
        with trio.move_on_at(deadline):
            try:
                if inspect.iscoroutinefunction(sign):
                    signature: Any = await cast(Callable[[bytes], Awaitable[bytes]], sign)(message)
                else:
                    signature = await trio.to_thread.run_sync(sign, message, abandon_on_cancel=True,
                                                              limiter=self._signing_thread)
                    if inspect.isawaitable(signature):  # an object whose __call__ is async
                        signature = await signature
            except Exception as exc:  # the host's signer: its message may hold anything, so only its type
                raise CallFailed("SIGNER_FAILED", f"the signer raised {type(exc).__name__}") from None
            if not isinstance(signature, bytes | bytearray) or len(signature) != SIGNATURE_BYTES:
                raise CallFailed("SIGNER_FAILED", f"the signer returned no {SIGNATURE_BYTES}-byte ed25519 signature")
            return format_token(public_key, unix_ns, bytes(signature)), (clock, unix_ns)
        raise _too_slow(within)


def _too_slow(within: float) -> CallFailed:
    return CallFailed("SIGNER_FAILED", f"the signer did not answer within {within:g} s")
