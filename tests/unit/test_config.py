"""Configuration: parsing, validation and redaction (no I/O)."""

import pytest

from actors.config import EmitterConfig, parse_duration, redact_dsn
from actors.errors import ConfigError
from chipmock.model import parse_duration as chipmock_parse_duration

GOOD_DURATIONS = [("50ms", 0.05), ("2s", 2.0), ("1.5s", 1.5), ("1m", 60.0), ("1h", 3600.0), (" 10ms ", 0.01),
                  ("1m30s", 90.0), ("1h2m3.5s", 3723.5), ("500us", 0.0005), ("0", 0.0), (".5s", 0.5), ("7d", 604800.0)]
BAD_DURATIONS = ["", "fast", "-1s", "5 days", "1e3", "5x", "1 m", "s", "1m30"]


@pytest.mark.parametrize("parse", [parse_duration, chipmock_parse_duration])
@pytest.mark.parametrize("text,seconds", GOOD_DURATIONS)
def test_durations_with_units_and_go_spelling(parse, text: str, seconds: float) -> None:
    assert parse(text) == pytest.approx(seconds)


@pytest.mark.parametrize("parse", [parse_duration, chipmock_parse_duration])
@pytest.mark.parametrize("text", BAD_DURATIONS)
def test_bad_durations(parse, text: str) -> None:
    with pytest.raises(ValueError):
        parse(text)


@pytest.mark.parametrize("parse", [parse_duration, chipmock_parse_duration])
def test_a_bare_number_is_refused_with_the_units_to_write(parse) -> None:
    with pytest.raises(ValueError, match="no unit: write 50s or 50ms"):
        parse("50")


def test_the_environment_needs_units_too() -> None:
    with pytest.raises(ConfigError, match="DURABLE_EMITTER_PUBLISH_TIMEOUT.*no unit"):
        EmitterConfig.from_env({"DURABLE_EMITTER_PUBLISH_TIMEOUT": "2"})


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


def test_nothing_configured_is_one_message_naming_database_url_and_the_embedded_switch() -> None:
    with pytest.raises(ConfigError) as info:
        EmitterConfig.from_env({}).check_startable()
    message = str(info.value)
    assert "DATABASE_URL" in message and "DURABLE_EMITTER_EMBEDDED_POSTGRES=true" in message
    assert "CHIP_INGRESS_ENDPOINT" in message and "\n" not in message


def test_embedded_postgres_is_started_only_when_asked() -> None:
    asked = EmitterConfig.from_env({"DURABLE_EMITTER_EMBEDDED_POSTGRES": "true", "CHIP_INGRESS_ENDPOINT": "c:1"})
    asked.check_startable()
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        EmitterConfig(chip_endpoint="c:1").check_startable()
    with pytest.raises(ConfigError, match="choose one"):
        EmitterConfig(database_url="postgresql://db/x", embedded_postgres=True)


def test_an_unknown_variable_is_warned_about_with_the_closest_known_one(caplog) -> None:
    config = EmitterConfig.from_env({"DURABLE_EMITTER_MAX_PENDIGN": "5", "DURABLE_EMITTER_NONSENSE_KNOB": "1"})
    assert config.max_pending == 1_000_000  # ignored, as before, but no longer in silence
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("DURABLE_EMITTER_MAX_PENDIGN" in w and "did you mean DURABLE_EMITTER_MAX_PENDING?" in w
               for w in warnings), warnings
    assert any("DURABLE_EMITTER_NONSENSE_KNOB is not a durable-emitter setting" in w for w in warnings)


@pytest.mark.parametrize("reserved", ["outbox", "replay"])
def test_an_instance_id_that_names_rows_of_no_instance_is_refused(reserved) -> None:
    with pytest.raises(ConfigError, match=f"instance_id '{reserved}' is empty or reserved"):
        EmitterConfig(instance_id=reserved)
