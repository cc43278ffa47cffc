"""The configuration reference is generated from EmitterConfig: every field, its variable, default and comment."""

import dataclasses

from actors.config import EmitterConfig
from scripts import config_table


def test_every_field_has_a_row_with_a_meaning() -> None:
    comments = config_table.field_comments()
    for field in dataclasses.fields(EmitterConfig):
        assert comments.get(field.name), f"{field.name} has no comment in actors/config.py to explain it"


def test_every_number_shows_the_bound_the_configuration_enforces() -> None:
    accepted = {row.keyword: row.accepted for row in config_table.rows()}
    assert ">= 1" in accepted["retry_multiplier"] and ">= 10m" in accepted["chip_auth_ttl"]
    assert "> 0" in accepted["publish_timeout"] and ">= 0" in accepted["shutdown_timeout"]
    assert "<= 65535" in accepted["metrics_port"]
