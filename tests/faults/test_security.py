"""TLS to Chip, credentials, and secrets kept out of logs and errors."""

import logging
import subprocess
from pathlib import Path

import pytest

from actors import ChipRejected, EmitterConfig, open_emitter
from tests.helpers import pending_ids


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, made for this test."""
    cert, key = tmp_path / "chip.pem", tmp_path / "chip.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


async def test_tls_to_chip_verified_with_the_configured_ca(start_chipmock, make_config, certificate) -> None:
    cert, key = certificate
    chip = start_chipmock(tls=(cert.read_bytes(), key.read_bytes()))
    async with open_emitter(make_config(chip, chip_tls=True, chip_ca_file=cert)) as emitter:
        event_id = await emitter.emit(b"x", source="wf", type="tick")
        await emitter.flush(timeout=30)
    assert chip.counters.seen([event_id]) == {event_id}


async def test_plaintext_to_a_tls_endpoint_says_so_and_keeps_events(start_chipmock, make_config, certificate,
                                                                    database_url, caplog) -> None:
    cert, key = certificate
    chip = start_chipmock(tls=(cert.read_bytes(), key.read_bytes()))
    async with open_emitter(make_config(chip)) as emitter:  # chip_tls not set
        event_id = await emitter.emit(b"x", source="wf", type="tick")
    output = caplog.text  # the library logs through `logging`, at WARNING here
    assert "Chip does not answer yet" in output and chip.endpoint in output
    assert pending_ids(database_url) == {event_id}  # kept for when the configuration is fixed


async def test_basic_auth_is_sent_and_wrong_credentials_refuse_the_start(start_chipmock, make_config) -> None:
    chip = start_chipmock(credentials=("node", "right"))
    async with open_emitter(make_config(chip, chip_username="node", chip_password="right")) as emitter:
        event_id = await emitter.emit(b"x", source="wf", type="tick")
        await emitter.flush(timeout=30)
    assert chip.counters.seen([event_id]) == {event_id}
    with pytest.raises(ChipRejected, match="UNAUTHENTICATED") as info:
        async with open_emitter(make_config(chip, chip_username="node", chip_password="s3cr3t-wrong")):
            pass
    assert "s3cr3t-wrong" not in str(info.value)


async def test_dsn_and_chip_passwords_never_reach_logs_or_errors(start_chipmock, database_url, capsys,
                                                                 caplog) -> None:
    from psycopg.conninfo import make_conninfo

    caplog.set_level(logging.DEBUG)
    chip = start_chipmock(credentials=("node", "chip-pa55"))
    url_with_password = make_conninfo(database_url, password="db-pa55")  # trust auth ignores it
    config = EmitterConfig(database_url=url_with_password, chip_endpoint=chip.endpoint, chip_username="node",
                           chip_password="chip-pa55", metrics_port=0)
    async with open_emitter(config) as emitter:
        await emitter.emit(b"x", source="wf", type="tick")
        await emitter.flush(timeout=30)
        metrics = emitter.registry.collect()
    unreachable = EmitterConfig(database_url="postgresql://u:db-pa55@127.0.0.1:1/x", chip_endpoint=chip.endpoint,
                                start_timeout=1.0)  # the start's messages while it waits, then its error
    with pytest.raises(Exception) as info:
        async with open_emitter(unreachable):
            pass
    captured = capsys.readouterr()
    text = captured.out + captured.err + caplog.text + str(info.value) + repr(config)
    text += " ".join(str(s) for m in metrics for s in m.samples)
    assert "db-pa55" not in text and "chip-pa55" not in text
