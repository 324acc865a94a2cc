"""Shared fixtures: a throw-away copy of the example project per test (or per session)."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest

from prodguard.telemetry import disable_telemetry

ROOT = Path(__file__).resolve().parents[1]
# a flight a caller asks about (the request model of the example project)
FLIGHT_REQUEST = {
    "carrier": "UA",
    "flight": 1545,
    "tailnum": "N14228",
    "origin": "EWR",
    "dest": "IAH",
    "scheduled_departure": "2013-05-01T00:30:00Z",
    "distance": 1400.0,
}
disable_telemetry()

# A test's tier is its folder: every test under tests/<tier>/ carries the marker <tier> (the
# markers are strict, see pyproject.toml), so `pytest -m unit` is exactly tests/unit.
TIERS = ("unit", "integration", "e2e", "reliability")


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    tests = ROOT / "tests"
    for item in items:
        folder = item.path.relative_to(tests).parts[0]
        if folder in TIERS:
            item.add_marker(folder)


def utc(text: str) -> datetime:
    return pd.Timestamp(text, tz="UTC").to_pydatetime()


def make_project(target: Path) -> Path:
    """Copy the example project's config, suites, registry config and feature repo."""
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "prodguard.yaml", target / "prodguard.yaml")
    shutil.copytree(ROOT / "expectations", target / "expectations")
    shutil.copytree(ROOT / "mlruns_config", target / "mlruns_config")
    shutil.copytree(
        ROOT / "feature_repo", target / "feature_repo", ignore=shutil.ignore_patterns("__pycache__")
    )
    return target


def copy_project(source: Path, target: Path) -> Path:
    """A copy of a prepared project (its stores included) to change freely; Feast's registry is
    left out (it records absolute paths): materialize the copy before reading features."""
    root = make_project(target)
    shutil.copytree(source / ".prodguard", root / ".prodguard")
    shutil.rmtree(root / ".prodguard" / "feast", ignore_errors=True)
    return root


@pytest.fixture(autouse=True)
def _no_prodguard_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("PRODGUARD_"):
            monkeypatch.delenv(key)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path / "project")


@pytest.fixture
def settings(project: Path):
    from prodguard.config import load_settings

    return load_settings(project / "prodguard.yaml", environ={})


@pytest.fixture(scope="session")
def flights_loader():
    from prodguard_flights.loader import FlightsLoader

    return FlightsLoader()


@pytest.fixture(scope="session")
def ingested(tmp_path_factory: pytest.TempPathFactory, flights_loader) -> Iterator[Path]:
    """A project with Jan-Apr 2013 ingested and materialized up to May 1 (read-only use)."""
    from prodguard.app import alerter_for
    from prodguard.config import load_settings
    from prodguard.features.feast_adapter import FeastStore
    from prodguard.ingestion.pipeline import Ingestor

    root = make_project(tmp_path_factory.mktemp("ingested") / "project")
    settings = load_settings(root / "prodguard.yaml", environ={})
    ingestor = Ingestor(settings, alerter_for(settings), loader=flights_loader)
    ingestor.ingest_window(utc("2013-01-01"), utc("2013-05-01"))
    FeastStore(settings).materialize(until=utc("2013-05-01"))
    yield root


@pytest.fixture(scope="session")
def served_project(ingested, tmp_path_factory) -> Path:
    """Jan-Apr ingested, materialized to May 1, v1 (Jan-Feb) and v2 (Jan-Mar) trained,
    v2 champion and v1 standby. Copy it before moving aliases."""
    from prodguard import app, wiring
    from prodguard.config import load_settings

    root = make_project(tmp_path_factory.mktemp("served") / "project")
    shutil.copytree(ingested / ".prodguard", root / ".prodguard")
    shutil.rmtree(root / ".prodguard" / "feast")  # re-applied below with this project's paths
    settings = load_settings(root / "prodguard.yaml", environ={})
    wiring.feature_store(settings).materialize(until=utc("2013-05-01"))
    app.train(settings, utc("2013-01-01"), utc("2013-03-01"), actor="tests")
    app.train(settings, utc("2013-01-01"), utc("2013-04-01"), actor="tests")
    operations = wiring.registry_operations(settings, with_checks=True)
    operations.promote("tests", "setup", version=1)
    operations.promote("tests", "setup", version=2)
    return root


DAILY_WINDOWS = {
    "PRODGUARD_MONITORING__WINDOW__MINUTES": "1440",
    "PRODGUARD_MONITORING__WINDOW__STEP_MINUTES": "1440",
    "PRODGUARD_MONITORING__WINDOW__MIN_ROWS": "200",
}


@pytest.fixture(scope="session")
def drilled(served_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """v2 champion with a staging baseline (April 1-4), v1 standby; v3 = v2 with scores
    shifted by +0.4, registered (no alias). Copy it before moving aliases."""
    from prodguard import wiring
    from prodguard.config import load_settings
    from prodguard.monitoring.jobs import record_baseline
    from prodguard.rollout.faults import register_faulty
    from prodguard.training.trainer import pip_requirements

    root = copy_project(served_project, tmp_path_factory.mktemp("drilled") / "project")
    settings = load_settings(root / "prodguard.yaml", environ=DAILY_WINDOWS)
    wiring.feature_store(settings).materialize(until=utc("2013-05-01"))
    record_baseline(settings, utc("2013-04-01"), utc("2013-04-04"), version=2)
    operations = wiring.registry_operations(settings)
    assert register_faulty(operations, 2, 0.4, "tests", pip_requirements()) == 3
    return root


# ---- the production backends of this machine (PostgreSQL, Redis) ----------------------------

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_ADDRESS = "127.0.0.1:6379"


def debian_binary(name: str) -> str:
    """The path of a binary of Debian's ``prometheus`` package (``.ci/run`` installs it):
    missing, the test fails under CI and is skipped elsewhere."""
    found = shutil.which(name)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing: .ci/run installs Debian's prometheus package")
        pytest.skip(f"{name} not installed (apt-get install prometheus)")
    return found


def create_pg_database(purpose: str) -> tuple[str, str]:
    """A fresh, uniquely named database on the real PostgreSQL server: (name, SQLAlchemy URL
    ``postgresql+psycopg://...``). Drop it with :func:`drop_pg_databases`."""
    import psycopg

    name = f"pgt_{purpose}_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL on 127.0.0.1:5432 is not reachable ({exc}); start it")
    return name, f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def drop_pg_databases(names: list[str]) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
        for name in names:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def delete_redis_keys(namespace: str) -> None:
    """Every key on the real Redis server containing ``namespace``."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=f"*{namespace}*".encode(), count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def pg_database() -> Iterator[Callable[[str], str]]:
    """Creates databases of its own on the real PostgreSQL server (dropped after the test):
    ``pg_database("store")`` -> a SQLAlchemy URL ``postgresql+psycopg://...`` of a fresh,
    uniquely named database, so tests run repeatedly and in parallel."""
    created: list[str] = []

    def create(purpose: str) -> str:
        name, url = create_pg_database(purpose)
        created.append(name)
        return url

    yield create
    drop_pg_databases(created)


@pytest.fixture
def redis_namespace() -> Iterator[str]:
    """A unique name for the test's keys on the real Redis server (the Feast project name, or a
    key prefix); every key containing it is deleted after the test."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis on {REDIS_ADDRESS} is not reachable ({exc}); start it")
    finally:
        client.close()
    name = f"pgt_{uuid.uuid4().hex[:12]}"
    yield name
    delete_redis_keys(name)
