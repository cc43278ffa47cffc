"""Chip's node token and credentials settings, without I/O: the wire format, chipmock's check, the refusals."""

import subprocess
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from actors.adapters.chip_auth import ChipCredentials, load_key_file
from actors.config import EmitterConfig
from actors.core.credentials import is_loopback, parse_headers
from actors.core.node_token import format_token, parse_token, signed_message
from actors.errors import ConfigError
from chipmock.auth import AuthPolicy, check_token, refusal

NOW = 1_760_000_000 * 10**9


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _token(key: Ed25519PrivateKey, unix_ns: int = NOW, *, public: bytes | None = None) -> str:
    public = public or _raw(key)
    return format_token(public, unix_ns, key.sign(signed_message(public, unix_ns)))


def test_the_token_is_upstreams_v2_format_and_reads_back() -> None:
    key = Ed25519PrivateKey.generate()
    public = _raw(key)
    token = _token(key)
    version, key_hex, time_text, signature_hex = token.split(":")
    assert (version, key_hex, time_text) == ("2", public.hex(), str(NOW))
    # ed25519 over the 32 key bytes followed by the time as a big-endian uint64
    key.public_key().verify(bytes.fromhex(signature_hex), public + NOW.to_bytes(8, "big"))
    assert parse_token(token) == (public, NOW, bytes.fromhex(signature_hex))


@pytest.mark.parametrize("text", ["", "1:aa:1:bb", "2:zz:1:" + "00" * 64, "2:" + "00" * 32 + ":x:" + "00" * 64,
                                  "2:" + "00" * 31 + ":1:" + "00" * 64, "2:" + "00" * 32 + ":1:" + "00" * 63])
def test_malformed_tokens_are_refused_by_both_readers(text: str) -> None:
    with pytest.raises(ValueError):
        parse_token(text)
    assert check_token(text, AuthPolicy(token_keys=(b"\0" * 32,)), NOW) == "malformed node token"


def test_chipmock_admits_the_librarys_token_and_says_why_it_refuses_others() -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    policy = AuthPolicy(token_keys=(_raw(key),), token_max_age=900)
    assert check_token(_token(key), policy, NOW + 10**9) is None
    assert check_token(_token(other), policy, NOW) == "node token from an unknown key"
    assert check_token(_token(key, NOW - 901 * 10**9), policy, NOW).startswith("stale node token")
    forged = _token(other, public=_raw(key))  # names the trusted key, signed by another
    assert check_token(forged, policy, NOW) == "bad node token signature"
    assert check_token(None, policy, NOW) == "no node token"
    assert refusal({"x-api-key": "s3cret"}, AuthPolicy(headers=(("x-api-key", "s3cret"),)), NOW) is None
    assert refusal({"x-api-key": "nope"}, AuthPolicy(headers=(("x-api-key", "s3cret"),)), NOW) == \
        "header x-api-key missing or wrong"


def test_chipmocks_policy_shows_no_header_value_or_password_in_its_repr() -> None:
    policy = AuthPolicy(token_keys=(b"\1" * 32,), headers=(("x-api-key", "h3ader-s3cret"),), basic="Basic dTpwYXNz")
    assert "h3ader-s3cret" not in repr(policy) and "dTpwYXNz" not in repr(policy)
    assert "x-api-key=***" in policy.describe()


def test_key_files_from_openssl_and_as_hex_seed(tmp_path: Path) -> None:
    pem = tmp_path / "node.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(pem)], check=True, timeout=30)
    public, sign = load_key_file(pem)
    key = serialization.load_pem_private_key(pem.read_bytes(), password=None)
    assert public == _raw(key)  # type: ignore[arg-type]
    policy = AuthPolicy(token_keys=(public,))
    assert check_token(format_token(public, NOW, sign(signed_message(public, NOW))), policy, NOW) is None

    seed = Ed25519PrivateKey.generate()
    hex_file = tmp_path / "node.hex"
    hex_file.write_text(seed.private_bytes_raw().hex() + "\n")
    assert load_key_file(hex_file)[0] == _raw(seed)


@pytest.mark.parametrize("content", [b"not a key", b"ab" * 31, b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END"])
def test_a_bad_key_file_names_the_setting_and_never_its_content(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "node.key"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match="CHIP_INGRESS_AUTH_KEY_FILE") as info:
        load_key_file(path)
    assert content.decode()[:8] not in str(info.value)
    with pytest.raises(ConfigError, match="cannot read"):
        load_key_file(tmp_path / "missing")


def test_static_headers_from_the_environment_and_never_in_repr_or_errors() -> None:
    config = EmitterConfig.from_env({"CHIP_INGRESS_ENDPOINT": "127.0.0.1:50051",
                                     "CHIP_INGRESS_AUTH_HEADERS": "X-Api-Key=h3ader-s3cret, x-tenant=a=b"})
    assert config.chip_auth_headers == {"x-api-key": "h3ader-s3cret", "x-tenant": "a=b"}
    assert "h3ader-s3cret" not in repr(config)
    with pytest.raises(ConfigError, match="CHIP_INGRESS_AUTH_HEADERS") as info:
        EmitterConfig.from_env({"CHIP_INGRESS_AUTH_HEADERS": "h3ader-s3cret"})
    assert "h3ader-s3cret" not in str(info.value)
    with pytest.raises(ConfigError, match="not printable ASCII") as info:
        EmitterConfig(chip_auth_headers={"x-api-key": "h3ader-s3cret\n"})
    assert "h3ader-s3cret" not in str(info.value)
    assert parse_headers("a=1,b=2") == {"a": "1", "b": "2"}


@pytest.mark.parametrize("headers", ["x-tenant=a, authorization: bearer s3crettoken==",
                                     "x-tenant=a,Authorization Bearer s3crettoken=x"])
def test_a_malformed_header_is_named_by_its_position_never_its_text(headers: str) -> None:
    env = {"CHIP_INGRESS_ENDPOINT": "127.0.0.1:50051", "CHIP_INGRESS_AUTH_HEADERS": headers}
    with pytest.raises(ConfigError, match="CHIP_INGRESS_AUTH_HEADERS.*the name of header 2 ") as info:
        EmitterConfig.from_env(env)
    assert "s3cret" not in str(info.value)
    with pytest.raises(ConfigError, match="header 1 is one gRPC sets itself") as info:
        EmitterConfig(chip_auth_headers={"grpc-s3cret": "x"})
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize("endpoint,loopback", [("127.0.0.1:1", True), ("localhost:1", True), ("[::1]:1", True),
                                               ("LocalHost:1", True), ("127.8.0.1:1", True), ("10.0.0.1:1", False),
                                               ("chip.example:443", False), ("localhost.example:1", False),
                                               # only the exact name: DNS decides where these go
                                               ("foo.localhost:1", False), ("localhost.:1", False),
                                               # gRPC reads an unbracketed ::1:1 as one address, on port 443
                                               ("::1:1", False), ("[::2]:1", False)])
def test_loopback_is_told_without_dns(endpoint: str, loopback: bool) -> None:
    assert is_loopback(endpoint) is loopback


@pytest.mark.parametrize("endpoint", ["::1:1", "fe80::1:443", "[::1]", "[chip]:1", "chip:", "chip:0", "[::1:1"])
def test_an_endpoint_that_is_not_host_port_is_refused(endpoint: str) -> None:
    with pytest.raises(ConfigError, match=r"chip_endpoint must be host:port \(\[address\]:port for IPv6\)"):
        EmitterConfig(chip_endpoint=endpoint)


def test_credentials_to_an_unbracketed_ipv6_endpoint_or_a_localhost_subdomain_need_tls() -> None:
    with pytest.raises(ConfigError, match="plaintext to foo.localhost:1"):
        EmitterConfig(chip_endpoint="foo.localhost:1", chip_auth_headers={"x-api-key": "v"})
    EmitterConfig(chip_endpoint="[::1]:50051", chip_auth_headers={"x-api-key": "v"})


@pytest.mark.parametrize("secret", [dict(chip_auth_headers={"x-api-key": "v"}), dict(chip_auth_public_key="00" * 32),
                                    dict(chip_auth_key_file=Path("/k")), dict(chip_username="u", chip_password="p")])
def test_credentials_in_plaintext_beyond_loopback_are_refused_naming_the_settings(secret: dict) -> None:
    with pytest.raises(ConfigError, match="CHIP_INGRESS_TLS=true.*CHIP_INGRESS_AUTH_PLAINTEXT=true"):
        EmitterConfig(chip_endpoint="chip.example:443", **secret)
    EmitterConfig(chip_endpoint="chip.example:443", chip_tls=True, **secret)
    EmitterConfig(chip_endpoint="chip.example:443", chip_auth_plaintext=True, **secret)
    EmitterConfig(chip_endpoint="127.0.0.1:50051", **secret)


def test_a_signer_set_later_is_refused_where_its_token_would_go_in_plaintext() -> None:
    """No credentials configured, so the configuration passed; a signer set after start must not change that."""
    sign = Ed25519PrivateKey.generate().sign
    remote = ChipCredentials(EmitterConfig(chip_endpoint="chip.example:443"))
    with pytest.raises(ConfigError, match="plaintext to chip.example:443.*CHIP_INGRESS_TLS=true.*"
                                          "CHIP_INGRESS_AUTH_PLAINTEXT=true"):
        remote.set_signer(sign, b"\1" * 32)
    assert not remote.uses_node_token
    for allowed in (dict(chip_endpoint="chip.example:443", chip_tls=True),
                    dict(chip_endpoint="chip.example:443", chip_auth_plaintext=True),
                    dict(chip_endpoint="127.0.0.1:50051")):
        credentials = ChipCredentials(EmitterConfig(**allowed))
        credentials.set_signer(sign, b"\1" * 32)
        assert credentials.uses_node_token


def test_inconsistent_token_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="at least 10m"):
        EmitterConfig(chip_auth_public_key="00" * 32, chip_auth_ttl=60)
    with pytest.raises(ConfigError, match="needs chip_auth_public_key"):
        EmitterConfig(chip_auth_signer=lambda message: b"")
    with pytest.raises(ConfigError, match="both set"):
        EmitterConfig(chip_auth_key_file=Path("/k"), chip_auth_public_key="00" * 32)
    with pytest.raises(ConfigError, match="64 hex"):
        EmitterConfig(chip_auth_public_key="abc")
    with pytest.raises(ConfigError, match="which the node token sets"):
        EmitterConfig(chip_auth_public_key="00" * 32, chip_auth_headers={"X-Beholder-Node-Auth-Token": "x"})
    signer = EmitterConfig(chip_auth_public_key="00" * 32, chip_auth_signer=lambda message: b"")
    assert "signer" not in repr(signer)
    # A signer is given in code only: no variable reads it.
    assert EmitterConfig.from_env({"DURABLE_EMITTER_CHIP_AUTH_SIGNER": "x"}).chip_auth_signer is None


def test_the_token_time_is_nanoseconds_of_the_wall_clock() -> None:
    key = Ed25519PrivateKey.generate()
    now = time.time_ns()
    assert check_token(_token(key, now), AuthPolicy(token_keys=(_raw(key),)), time.time_ns()) is None
