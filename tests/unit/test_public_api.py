"""The public face: exactly these names, so private modules can move freely."""

import ast
import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest

import actors


def test_public_names_are_pinned() -> None:
    public = {name for name in dir(actors)
              if not name.startswith("_") and not isinstance(getattr(actors, name), types.ModuleType)}
    assert public == set(actors.__all__) - {"outbox"} == {"EmitterStatistics",
        "open_emitter", "open_asyncio_emitter", "open_blocking_emitter", "AsyncioEmitter", "BlockingEmitter",
        "Emitter", "EmitterConfig", "EmitterError", "BacklogFull", "EventTooLarge",
        "InvalidEvent", "ConfigError", "StoreUnavailable", "ChipRejected", "FlushTimeout",
        "EmitterClosed", "SupervisorGaveUp", "SchemaError", "UnknownDeadLetter", "StoreFailure",
        "EmitterForked", "CommitOutcomeUnknown",
    }


def test_the_outbox_is_the_one_public_submodule_and_its_names_are_pinned() -> None:
    """``from actors import outbox`` (and ``actors.outbox``) serves the outbox; it loads no Trio."""
    assert "outbox" in actors.__all__ and isinstance(actors.outbox, types.ModuleType)
    assert set(actors.outbox.__all__) == {"emit", "emit_many", "aemit", "aemit_many", "DEFAULT_MAX_EVENT_BYTES"}
    probe = "import sys; from actors import outbox; outbox.emit; print('trio' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_every_error_is_an_emitter_error() -> None:
    for name in ["BacklogFull", "EventTooLarge", "InvalidEvent", "ConfigError", "StoreUnavailable",
                 "ChipRejected", "FlushTimeout", "EmitterClosed", "SupervisorGaveUp", "SchemaError",
                 "UnknownDeadLetter", "EmitterForked", "CommitOutcomeUnknown"]:
        assert issubclass(getattr(actors, name), actors.EmitterError)


def test_the_types_the_open_functions_return_are_public() -> None:
    """A host can annotate what it holds: ``e: actors.AsyncioEmitter``, ``e: actors.BlockingEmitter``."""
    (yielded,) = typing.get_args(typing.get_type_hints(actors.open_asyncio_emitter)["return"])
    assert yielded is actors.AsyncioEmitter
    assert typing.get_type_hints(actors.open_blocking_emitter)["return"] is actors.BlockingEmitter


def test_importing_the_face_loads_no_runtime() -> None:
    probe = ("import sys, actors; print(sorted({'trio', 'psycopg', 'grpc', 'prometheus_client'} & set(sys.modules)));"
             "actors.open_emitter; print('trio' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["[]", "True"]  # loaded on first use of a name that needs it


def test_type_checkers_see_the_names_the_face_serves() -> None:
    """The ``TYPE_CHECKING`` imports (what mypy and IDEs read) name the same things as the lazy table."""
    tree = ast.parse(Path(actors.__file__).read_text())
    (block,) = [node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "_typing.TYPE_CHECKING"]
    seen = {(alias.asname, f".{node.module or alias.name}") for node in block.body if isinstance(node, ast.ImportFrom)
            for alias in node.names if alias.asname == alias.name}
    assert seen == set(actors._LAZY.items()) | {(name, f".{name}") for name in actors._SUBMODULES}
    for name, module in actors._LAZY.items():
        assert getattr(actors, name) is getattr(sys.modules[f"actors{module}"], name)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="open_emiter"):
        actors.open_emiter  # noqa: B018
