"""What users install: dependencies that match the imports, typing marker, licence, version, the driver's footing."""

import ast
import importlib.metadata
import inspect
import sys
import tomllib
from pathlib import Path

import psycopg
from packaging.requirements import Requirement

import actors

ROOT = Path(__file__).resolve().parents[2]
INSTALLED = Path(actors.__file__).resolve().parents[1]  # the source tree, or site-packages in CI's wheel run
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _third_party_imports() -> set[str]:
    names: set[str] = set()
    for package in ("actors", "chipmock", "chippb"):
        for path in (INSTALLED / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("actors", "chipmock", "chippb")}


def test_runtime_dependencies_are_exactly_what_the_code_imports() -> None:
    def name(requirement: str) -> str:
        return Requirement(requirement).name.lower().replace("_", "-")

    declared = {name(r) for r in PYPROJECT["project"]["dependencies"]}
    optional = {name(r) for r in PYPROJECT["project"]["optional-dependencies"]["otel"]}  # imported if installed
    providers = importlib.metadata.packages_distributions()
    imported = set()
    for module in _third_party_imports():
        dists = [name(dist) for dist in providers[module]]  # a namespace package (opentelemetry) has several
        imported.add(next((dist for dist in dists if dist in declared | optional), dists[0]))
    assert declared | optional == imported


def test_the_wheel_carries_a_typing_marker_a_licence_and_a_version() -> None:
    assert (INSTALLED / "actors" / "py.typed").exists() and "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["actors"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License") and PYPROJECT["project"]["license"] == "MIT"
    assert "Typing :: Typed" in PYPROJECT["project"]["classifiers"]
    assert actors.__version__ == importlib.metadata.version("durable-emitter") == PYPROJECT["project"]["version"]


def test_psycopg_is_pinned_below_its_next_minor() -> None:
    (spec,) = [r for r in PYPROJECT["project"]["dependencies"] if r.startswith("psycopg")]
    major, minor = (int(part) for part in psycopg.__version__.split(".")[:2])
    assert Requirement(spec).specifier.contains(psycopg.__version__)
    assert not Requirement(spec).specifier.contains(f"{major}.{minor + 1}.0"), spec


def test_the_psycopg_internals_the_store_drives_are_still_there() -> None:
    """actors/adapters/driver.py drives psycopg's sans-I/O generators itself. If this fails, psycopg moved
    them: read its changelog, fix driver._wait / Connection.run, and only then raise the upper bound."""
    from psycopg.abc import PQGen  # noqa: F401  (the generator type the driver annotates with)
    from psycopg.waiting import Ready, Wait

    execute_gen = getattr(psycopg.Cursor, "_execute_gen", None)
    assert execute_gen is not None, "psycopg.Cursor._execute_gen is gone"
    assert inspect.isgeneratorfunction(execute_gen), "Cursor._execute_gen is no longer a generator"
    assert list(inspect.signature(execute_gen).parameters)[:3] == ["self", "query", "params"]
    assert {w.name for w in Wait} >= {"R", "W", "RW"} and {r.name for r in Ready} >= {"R", "W"}
    assert hasattr(psycopg.pq.PGconn, "socket"), "PGconn.socket (the fd Trio waits on) is gone"
    # A pooled connection's statements (Connection._execute_unnamed): psycopg converts, we send.
    assert inspect.isgeneratorfunction(psycopg.Cursor._start_query), "Cursor._start_query is no longer a generator"
    for name in ("_convert_query", "_check_results", "_set_results"):
        assert callable(getattr(psycopg.Cursor, name, None)), f"psycopg.Cursor.{name} is gone"
    # Connecting on Trio (driver.connect_on_trio): psycopg splits the attempts, we drive each one.
    from psycopg.conninfo import conninfo_attempts, timeout_from_conninfo  # noqa: F401
    from psycopg.generators import execute, fetch_many, send  # noqa: F401

    connect_gen = getattr(psycopg.Connection, "_connect_gen", None)
    assert connect_gen is not None, "psycopg.Connection._connect_gen is gone"
    assert inspect.isgeneratorfunction(connect_gen), "Connection._connect_gen is no longer a generator"
