"""README's configuration table is generated from EmitterConfig: every field, its variable, default and comment."""

import dataclasses

from actors.config import EmitterConfig
from scripts import config_table


def test_readme_table_is_the_generated_one() -> None:
    assert config_table.in_readme() == config_table.render(), (
        "README's configuration table is stale: run `python -m scripts.config_table --write`")


def test_every_field_has_a_row_with_a_meaning() -> None:
    comments = config_table.field_comments()
    for field in dataclasses.fields(EmitterConfig):
        assert comments.get(field.name), f"{field.name} has no comment in actors/config.py to explain it"
