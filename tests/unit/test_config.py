"""Configuration: parsing, validation and redaction (no I/O)."""

import pytest

from actors.config import EmitterConfig, parse_duration, redact_dsn
from actors.errors import ConfigError


@pytest.mark.parametrize("text,seconds", [("50ms", 0.05), ("2s", 2.0), ("2", 2.0), ("1.5", 1.5),
                                          ("1m", 60.0), ("1h", 3600.0), (" 10ms ", 0.01)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "fast", "-1s", "5 days", "1e3"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_from_env_reads_standard_names_and_knobs() -> None:
    config = EmitterConfig.from_env({
        "DATABASE_URL": "postgresql://u:p@db:5432/x",
        "CHIP_INGRESS_ENDPOINT": "chip:50051",
        "CHIP_INGRESS_TLS": "true",
        "CHIP_INGRESS_USERNAME": "u",
        "CHIP_INGRESS_PASSWORD": "pw",
        "DURABLE_EMITTER_MAX_PENDING": "50_000",
        "DURABLE_EMITTER_PUBLISH_TIMEOUT": "2s",
        "DURABLE_EMITTER_PUBLISH_LINGER": "10ms",
        "UNRELATED": "ignored",
    })
    assert config.chip_endpoint == "chip:50051" and config.chip_tls
    assert config.max_pending == 50_000
    assert config.publish_timeout == 2.0 and config.publish_linger == pytest.approx(0.01)
    assert "pw" not in repr(config)


def test_overrides_beat_the_environment() -> None:
    config = EmitterConfig.from_env({"DURABLE_EMITTER_MAX_PENDING": "oops"}, max_pending=7)
    assert config.max_pending == 7


@pytest.mark.parametrize("env,named", [
    ({"DURABLE_EMITTER_MAX_PENDING": "lots"}, "DURABLE_EMITTER_MAX_PENDING"),
    ({"DURABLE_EMITTER_PUBLISH_TIMEOUT": "soon"}, "DURABLE_EMITTER_PUBLISH_TIMEOUT"),
    ({"CHIP_INGRESS_TLS": "maybe"}, "CHIP_INGRESS_TLS"),
    ({"DURABLE_EMITTER_MAX_PENDING": "0"}, "max_pending"),
    ({"CHIP_INGRESS_ENDPOINT": "no-port"}, "chip_endpoint"),
    ({"CHIP_INGRESS_USERNAME": "only-user"}, "chip_password"),
    ({"DURABLE_EMITTER_SCHEMA": "Emitter; DROP"}, "schema"),
    ({"DURABLE_EMITTER_AUTO_MIGRATE": "perhaps"}, "DURABLE_EMITTER_AUTO_MIGRATE"),
])
def test_malformed_values_name_the_setting(env: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        EmitterConfig.from_env(env)


def test_schema_and_auto_migration_knobs() -> None:
    assert EmitterConfig.from_env({}).schema == "public"
    assert EmitterConfig.from_env({"DURABLE_EMITTER_SCHEMA": "emitter"}).schema == "emitter"
    assert EmitterConfig.from_env({}).migrates_at_start  # the embedded Postgres migrates itself
    external = {"DATABASE_URL": "postgresql://db/x"}
    assert not EmitterConfig.from_env(external).migrates_at_start
    assert EmitterConfig.from_env({**external, "DURABLE_EMITTER_AUTO_MIGRATE": "true"}).migrates_at_start
    assert not EmitterConfig.from_env({"DURABLE_EMITTER_AUTO_MIGRATE": "false"}).migrates_at_start


def test_password_never_echoed_in_errors() -> None:
    with pytest.raises(ConfigError) as info:
        EmitterConfig.from_env({"CHIP_INGRESS_PASSWORD": ""})
    assert "CHIP_INGRESS_PASSWORD" in str(info.value)


def test_inconsistent_knobs_are_refused() -> None:
    with pytest.raises(ConfigError, match="max_event_bytes"):
        EmitterConfig(max_event_bytes=10, max_request_bytes=5)
    with pytest.raises(ConfigError, match="lease_duration"):
        EmitterConfig(lease_duration=5, publish_timeout=5)


def test_redact_dsn_hides_passwords_in_both_forms() -> None:
    assert redact_dsn("postgresql://bob:s3cret@host:5432/db") == "postgresql://bob:***@host:5432/db"
    assert "s3cret" not in redact_dsn("host=h password=s3cret dbname=d")
