"""What Chip's credentials may be, checked without I/O: static headers, the node token's settings, plaintext.

A token, a header secret or a password never crosses the network in
plaintext to a host other than loopback unless the configuration says so
explicitly: a missing ``CHIP_INGRESS_TLS=true`` must not put a node's
credentials on the wire in the clear. Messages name settings, never values.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping

from .node_token import MIN_TTL, TOKEN_HEADER, public_key_from_hex

# gRPC metadata keys: lower-case letters, digits, "-", "_", "."; values printable ASCII.
_HEADER_NAME = re.compile(r"[0-9a-z_.-]+")
_HEADER_VALUE = re.compile(r"[\x20-\x7e]*")
_RESERVED_HEADERS = frozenset({"content-type", "te", "user-agent", "grpc-timeout", "host"})


def parse_headers(text: str) -> dict[str, str]:
    """``name=value`` pairs separated by commas (``CHIP_INGRESS_AUTH_HEADERS``). Raises ValueError, valueless."""
    headers: dict[str, str] = {}
    for index, pair in enumerate(part for part in text.split(",") if part.strip()):
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"pair {index + 1} is not name=value")
        headers[name.strip().lower()] = value.strip()
    if not headers:
        raise ValueError("no name=value pairs")
    return headers


def header_problem(headers: Mapping[str, str]) -> str | None:
    """Why these static headers cannot be sent as gRPC metadata, or None.

    A header is named by its position, never its text: a pair mistyped as
    ``authorization: Bearer <secret>=`` puts the secret in the name.
    """
    for position, (name, value) in enumerate(headers.items(), start=1):
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name.lower()) or name.lower().endswith("-bin"):
            return f"the name of header {position} is not a gRPC metadata key (letters, digits, '-', '_', '.'; no -bin)"
        if name.lower() in _RESERVED_HEADERS or name.lower().startswith("grpc-"):
            return f"header {position} is one gRPC sets itself ({', '.join(sorted(_RESERVED_HEADERS))}, grpc-*)"
        if not isinstance(value, str) or not _HEADER_VALUE.fullmatch(value):
            return f"the value of header {position} is not printable ASCII"
    return None


def split_host_port(endpoint: str) -> tuple[str, int] | None:
    """``host`` and ``port`` of ``host:port`` or ``[ipv6]:port``; None if it is neither.

    An IPv6 address needs its brackets: gRPC reads ``::1:1`` as one address (on port 443).
    """
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
    elif ":" in host or "[" in host or "]" in host:
        return None
    return host, int(port)


def is_loopback(endpoint: str) -> bool:
    """Whether ``host:port`` names this machine: exactly ``localhost``, or a loopback IP literal
    (127.0.0.0/8, ``[::1]``). No DNS is asked, so no other name counts, ``*.localhost`` included."""
    parts = split_host_port(endpoint)
    if parts is None:
        return False
    host = parts[0].lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def auth_problem(*, endpoint: str | None, tls: bool, plaintext_allowed: bool, basic_auth: bool,
                 headers: Mapping[str, str] | None, key_file: bool, public_key: str | None, signer: object,
                 ttl: float) -> str | None:
    """Why this credentials configuration is refused (naming the settings), or None."""
    token = key_file or public_key is not None or signer is not None
    if key_file and (public_key is not None or signer is not None):
        return ("CHIP_INGRESS_AUTH_KEY_FILE (chip_auth_key_file) and a public key or signer are both set: "
                "sign with the key file, or with chip_auth_signer for chip_auth_public_key, not both")
    if signer is not None and not callable(signer):
        return "chip_auth_signer must be a callable that signs bytes (returning the signature, or awaitable)"
    if signer is not None and public_key is None:
        return "chip_auth_signer needs chip_auth_public_key (CHIP_INGRESS_AUTH_PUBLIC_KEY), the key it signs for"
    if public_key is not None:
        try:
            public_key_from_hex(public_key)
        except ValueError as exc:
            return f"CHIP_INGRESS_AUTH_PUBLIC_KEY (chip_auth_public_key): {exc}"
    if ttl < MIN_TTL:
        return f"CHIP_INGRESS_AUTH_TTL (chip_auth_ttl) must be at least 10m (upstream's minimum), got {ttl:g}s"
    if headers is not None:
        problem = header_problem(headers)
        if problem:
            return f"CHIP_INGRESS_AUTH_HEADERS (chip_auth_headers): {problem}"
        names = {name.lower() for name in headers}
        if token and TOKEN_HEADER in names:
            return f"CHIP_INGRESS_AUTH_HEADERS names {TOKEN_HEADER}, which the node token sets"
        if basic_auth and "authorization" in names:
            return "CHIP_INGRESS_AUTH_HEADERS names authorization, which CHIP_INGRESS_USERNAME's basic auth sets"
    if basic_auth or token or headers:
        return plaintext_problem(endpoint, tls=tls, plaintext_allowed=plaintext_allowed)
    return None


def plaintext_problem(endpoint: str | None, *, tls: bool, plaintext_allowed: bool) -> str | None:
    """Why no credentials may go to ``endpoint`` (naming the settings), or None: TLS, loopback, or allowed."""
    if endpoint and not tls and not plaintext_allowed and not is_loopback(endpoint):
        return (f"Chip credentials would go in plaintext to {endpoint}: set CHIP_INGRESS_TLS=true (chip_tls), or "
                "CHIP_INGRESS_AUTH_PLAINTEXT=true (chip_auth_plaintext) if that network path is private")
    return None
