"""What chipmock requires of a call's metadata: basic auth, static headers, a valid node token.

A node token (upstream's V2 header) is ``2:<public key hex>:<unix ns>:<signature hex>``
in metadata ``x-beholder-node-auth-token``, signed with ed25519 over the public key's
32 bytes followed by the time as a big-endian uint64. chipmock reads it with its
own code (it imports nothing from the library it stands in for; a test holds this
reader to the library's writer). A refusal says why, never echoing a secret.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

TOKEN_HEADER = "x-beholder-node-auth-token"
FUTURE_SKEW_NS = 60 * 10**9  # a token signed up to a minute "in the future" is a clock apart, not forged


def parse_public_key(text: str) -> bytes:
    """32 bytes from 64 hex characters (``--auth-token-key``). Raises ValueError."""
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        key = b""
    if len(key) != 32:
        raise ValueError(f"{text!r} is not an ed25519 public key (64 hex characters)")
    return key


def parse_header(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` (``--auth-header``): the name in lower case, as gRPC carries it. Raises ValueError."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise ValueError("an --auth-header is NAME=VALUE")
    return name.strip().lower(), value


@dataclass(frozen=True)
class AuthPolicy:
    """What every call must carry. Empty: nothing (the default)."""

    token_keys: tuple[bytes, ...] = ()  # a valid token from one of these public keys, when any
    token_max_age: float = 900.0  # seconds since the token was signed
    # Secrets: never in repr (a test's assertion message, a log line of the policy).
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # (name, value) pairs each call must carry
    basic: str | None = field(default=None, repr=False)  # the expected ``authorization`` value (basic auth)

    def describe(self) -> str:
        """For the banner: the knobs, never a header's value."""
        shown = [f"auth_token_key={key.hex()}" for key in self.token_keys]
        if self.token_keys:
            shown.append(f"auth_token_max_age={self.token_max_age:g}s")
        shown += [f"auth_header={name}=***" for name, _ in self.headers]
        return " ".join(shown)


def check_token(value: str | None, policy: AuthPolicy, now_ns: int) -> str | None:
    """Why ``value`` is not a valid node token under ``policy`` (None: it is)."""
    if value is None:
        return "no node token"
    parts = value.split(":")
    if len(parts) != 4 or parts[0] != "2":
        return "malformed node token"
    try:
        key, signed_ns, signature = bytes.fromhex(parts[1]), int(parts[2]), bytes.fromhex(parts[3])
    except ValueError:
        return "malformed node token"
    if len(key) != 32 or len(signature) != 64 or not 0 <= signed_ns < 2**64:
        return "malformed node token"
    if key not in policy.token_keys:
        return "node token from an unknown key"
    age = (now_ns - signed_ns) / 1e9
    if age > policy.token_max_age:
        return f"stale node token: signed {age:.0f} s ago, max age {policy.token_max_age:g} s"
    if signed_ns - now_ns > FUTURE_SKEW_NS:
        return "node token signed in the future"
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(key).verify(signature, key + signed_ns.to_bytes(8, "big"))
    except InvalidSignature:
        return "bad node token signature"
    return None


def refusal(metadata: Mapping[str, str], policy: AuthPolicy, now_ns: int) -> str | None:
    """Why a call with ``metadata`` is refused (UNAUTHENTICATED), or None."""
    if policy.basic is not None and metadata.get("authorization") != policy.basic:
        return "bad or missing credentials"
    for name, value in policy.headers:
        if metadata.get(name) != value:
            return f"header {name} missing or wrong"
    if policy.token_keys:
        return check_token(metadata.get(TOKEN_HEADER), policy, now_ns)
    return None


@dataclass
class AuthCounts:
    """Calls admitted with a token, the distinct tokens seen, and refusals by reason. Thread-safe."""

    admitted: int = 0
    tokens: set[tuple[bytes, int]] = field(default_factory=set)  # (public key, signing time) of each token
    refused: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, token: str | None, reason: str | None) -> None:
        with self._lock:
            if reason is not None:
                self.refused[reason.split(":")[0]] += 1
            elif token is not None:
                self.admitted += 1
                parts = token.split(":")
                self.tokens.add((bytes.fromhex(parts[1]), int(parts[2])))

    def snapshot(self) -> tuple[int, frozenset[tuple[bytes, int]], dict[str, int]]:
        with self._lock:
            return self.admitted, frozenset(self.tokens), dict(self.refused)

