"""Chip's node token, as Chainlink nodes send it: made and read without I/O or cryptography.

The token rides on every call as gRPC metadata ``x-beholder-node-auth-token``
(upstream spells it ``X-Beholder-Node-Auth-Token``; gRPC sends keys in lower
case) with the value ``2:<public key hex>:<unix time in ns>:<signature hex>``.
The signature is ed25519 over the 32 public-key bytes followed by the time as a
big-endian unsigned 64-bit integer. Whoever signs (a key file, the node's
keystore) is the caller's business; this module only frames and reads.
``chipmock/auth.py`` keeps its own reader, which a test holds to this one.
"""

from __future__ import annotations

import re
from typing import NamedTuple

TOKEN_HEADER = "x-beholder-node-auth-token"
VERSION = "2"
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
MIN_TTL = 600.0  # upstream refuses a shorter rotation: the token is signed at most every 10 minutes
SIGNING_DEADLINE = 5.0  # how long a signer gets, as upstream gives it
_HEX = re.compile(r"[0-9a-fA-F]*")


class NodeToken(NamedTuple):
    public_key: bytes
    unix_ns: int
    signature: bytes


def signed_message(public_key: bytes, unix_ns: int) -> bytes:
    """The bytes a token's signature covers: the public key, then the time as a big-endian uint64."""
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise ValueError(f"an ed25519 public key has {PUBLIC_KEY_BYTES} bytes, got {len(public_key)}")
    return public_key + unix_ns.to_bytes(8, "big")


def format_token(public_key: bytes, unix_ns: int, signature: bytes) -> str:
    return f"{VERSION}:{public_key.hex()}:{unix_ns}:{signature.hex()}"


def parse_token(text: str) -> NodeToken:
    """The parts of a V2 token. Raises ValueError saying what is wrong (never echoing the token)."""
    parts = text.split(":")
    if len(parts) != 4 or parts[0] != VERSION:
        raise ValueError(f"not a version {VERSION} node token (version:public key:time:signature)")
    key_hex, time_text, signature_hex = parts[1:]
    if not _HEX.fullmatch(key_hex) or len(key_hex) != 2 * PUBLIC_KEY_BYTES:
        raise ValueError(f"the public key is not {PUBLIC_KEY_BYTES} bytes of hex")
    if not time_text.isdigit() or int(time_text) >= 2**64:
        raise ValueError("the time is not unix nanoseconds")
    if not _HEX.fullmatch(signature_hex) or len(signature_hex) != 2 * SIGNATURE_BYTES:
        raise ValueError(f"the signature is not {SIGNATURE_BYTES} bytes of hex")
    return NodeToken(bytes.fromhex(key_hex), int(time_text), bytes.fromhex(signature_hex))


def public_key_from_hex(text: str) -> bytes:
    """A 32-byte ed25519 public key from 64 hex characters. Raises ValueError."""
    stripped = text.strip()
    if not _HEX.fullmatch(stripped) or len(stripped) != 2 * PUBLIC_KEY_BYTES:
        raise ValueError(f"an ed25519 public key is {2 * PUBLIC_KEY_BYTES} hex characters")
    return bytes.fromhex(stripped)


def needs_refresh(signed_at: float | None, now: float, ttl: float) -> bool:
    """Whether a token signed at ``signed_at`` (None: none yet) must be signed again: once older than ``ttl``."""
    return signed_at is None or now - signed_at > ttl
