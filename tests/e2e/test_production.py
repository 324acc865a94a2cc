"""Production settings on the real servers of this machine: MLflow, the audit log, the
prediction log, feedback and alerts on PostgreSQL, the Feast registry on PostgreSQL and the
online store on Redis (``PRODGUARD_ENV=production``, credentials from the environment).

Two ``prodguard serve`` replicas share them. A promotion made with the CLI is followed by both;
two guards run at once and one rolls back while the other sees the move; two monitors judge
the shared log at once and each alert is raised once; every answered request is logged once.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import pytest

from tests.conftest import (
    DAILY_WINDOWS,
    FLIGHT_REQUEST,
    create_pg_database,
    delete_redis_keys,
    drop_pg_databases,
    make_project,
    utc,
)
from tests.e2e.cli import CLI, run, serving
from tests.e2e.test_serving_http import post

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis]
POLL_S = 1.0


@pytest.fixture(scope="module")
def production(ingested: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    """A project on production settings, own databases and Redis namespace: Jan-Apr in the
    (shared) offline store, materialized to Redis; v1, v2 trained into MLflow on PostgreSQL,
    v2 champion and v1 standby, v2 baselined on April 1-4; v3 = v2 shifted by +0.4."""
    import uuid

    from prodguard import app
    from prodguard.config import load_settings
    from prodguard.monitoring.jobs import record_baseline
    from prodguard.rollout.faults import register_faulty
    from prodguard.training.trainer import pip_requirements

    root = make_project(tmp_path_factory.mktemp("production") / "project")
    for folder in ("offline", "state"):  # the shared volume of a deployment
        shutil.copytree(ingested / ".prodguard" / folder, root / ".prodguard" / folder)
    (store_db, store_url), (mlflow_db, mlflow_url) = (
        create_pg_database("store"),
        create_pg_database("mlflow"),
    )
    namespace = f"pgt_{uuid.uuid4().hex[:12]}"
    env = {
        **DAILY_WINDOWS,
        "PRODGUARD_ENV": "production",
        "PRODGUARD_DATABASE_URL": store_url,
        "PRODGUARD_MLFLOW_TRACKING_URI": mlflow_url,
        "PRODGUARD_ARTIFACT_ROOT": str(root / "artifacts"),
        "PRODGUARD_REDIS": "127.0.0.1:6379",
        "PRODGUARD_FEAST_PROJECT": namespace,
        "PRODGUARD_SERVING__POLL_SECONDS": str(POLL_S),
        "PRODGUARD_ROLLOUT__TRIGGERS__MIN_REQUESTS": "40",
        # production requires a passed drill before a promotion (test_guard covers that gate);
        # here the subject is the backends and the replicas
        "PRODGUARD_ROLLOUT__REQUIRE_DRILL": "false",
    }
    try:
        settings = load_settings(root / "prodguard.yaml", environ=env)
        assert settings.environment == "production" and settings.storage.url == store_url
        app.feature_store(settings).materialize(until=utc("2013-05-01"))
        app.train(settings, utc("2013-01-01"), utc("2013-03-01"), actor="tests")
        app.train(settings, utc("2013-01-01"), utc("2013-04-01"), actor="tests")
        operations = app.registry_operations(settings, with_checks=True)
        operations.promote("tests", "setup", version=1)
        operations.promote("tests", "setup", version=2)
        record_baseline(settings, utc("2013-04-01"), utc("2013-04-04"), version=2)
        assert register_faulty(operations, 2, 0.4, "tests", pip_requirements()) == 3
        yield root, env, settings
    finally:
        drop_pg_databases([store_db, mlflow_db])
        delete_redis_keys(namespace)


def test_nothing_of_production_is_kept_in_local_files(production) -> None:
    root, env, settings = production
    data = root / ".prodguard"
    assert not (data / "predictions.db").exists() and not (data / "mlflow").exists()
    assert not (data / "feast").exists() and not (data / "alerts.jsonl").exists()
    status = json.loads(run(root, "status", "--json", env=env).stdout)
    assert status["environment"] == "production"
    assert status["aliases"] == {"champion": 2, "standby": 1, "candidate": None}
    assert status["stores"]["records"].startswith("postgresql+psycopg://")
    assert status["stores"]["online_store"].startswith("redis ")


class Client:
    """Sends /predict to one replica until stopped; remembers every answer."""

    def __init__(self, base: str, name: str) -> None:
        self.base, self.name = base, name
        self.answers: list[tuple[float, str, int, int | None]] = []  # time, id, status, version
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            request_id = f"{self.name}-{n}"
            status, body = post(self.base, "/predict", {**FLIGHT_REQUEST, "request_id": request_id})
            version = body.get("version") if isinstance(body, dict) else None
            self.answers.append((time.time(), request_id, status, version))
            time.sleep(0.02)

    def first_answer_of(self, version: int, after: float) -> float | None:
        return next((t for t, _, _, v in self.answers if v == version and t >= after), None)


@contextlib.contextmanager
def replicas(root: Path, env: dict[str, str]) -> Iterator[list[Client]]:
    with ThreadPoolExecutor(2) as pool:  # both cold starts at once
        contexts = [serving(root, env, log_name=f"serve-{name}.log") for name in "ab"]
        bases = list(pool.map(lambda c: c.__enter__(), contexts))
    clients = [Client(base, name) for base, name in zip(bases, "ab", strict=True)]
    try:
        for client in clients:
            client.thread.start()
        yield clients
    finally:
        for client in clients:
            client.stop.set()
            client.thread.join(timeout=30)
        for context in contexts:
            context.__exit__(None, None, None)


def json_documents(text: str) -> list:
    """The JSON documents printed one after another (pretty-printed) by a --json loop."""
    decoder, found, at = json.JSONDecoder(), [], 0
    while (at := _skip_space(text, at)) < len(text):
        document, at = decoder.raw_decode(text, at)
        found.append(document)
    return found


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at].isspace():
        at += 1
    return at


def wait_for(condition, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def guards(root: Path, env: dict[str, str]) -> list[subprocess.Popen]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PRODGUARD_")}
    return [
        subprocess.Popen(
            [*CLI, "guard", "--every", "0.5", "--json"],
            cwd=root,
            env={**clean, **env, "PYTHONUNBUFFERED": "1"},  # terminated: nothing left buffered
            stdout=(root / f"guard-{name}.jsonl").open("w"),
            stderr=(root / f"guard-{name}.log").open("w"),
        )
        for name in "ab"
    ]


def test_two_replicas_share_moves_log_guard_and_monitors(production) -> None:
    from prodguard.serving.prediction_log import PostgresPredictionLog

    root, env, settings = production
    with replicas(root, env) as clients:
        wait_for(lambda: all(c.answers and c.answers[-1][3] == 2 for c in clients))

        # a user promotes the faulty v3 with the CLI; both replicas follow
        run(root, "promote", "--version", "3", "--reason", "faulty on purpose",
            "--override-standby-retention", "replica test", env=env)  # fmt: skip
        wait_for(lambda: all(c.answers[-1][3] == 3 for c in clients))

        # two guards at once: one rolls back, the other sees the aliases moved
        running = guards(root, env)
        try:
            wait_for(lambda: all(c.answers[-1][3] == 2 for c in clients))
        finally:
            for guard in running:
                guard.terminate()
                guard.wait(timeout=30)

    audit = json.loads(run(root, "audit", "--json", env=env).stdout)
    promotion, rollback = audit[-2:]
    assert promotion["action"] == "promote" and promotion["to_state"]["champion"] == 3
    assert rollback["action"] == "rollback" and rollback["actor"] == "prodguard-guard"
    assert rollback["from_state"]["champion"] == 3 and rollback["to_state"]["champion"] == 2
    assert [r["action"] for r in audit].count("rollback") == 1
    decisions = [
        decision
        for name in "ab"
        for checks in json_documents((root / f"guard-{name}.jsonl").read_text())
        for decision in checks
    ]
    assert [d["action"] for d in decisions].count("rolled_back") == 1
    alerts = [json.loads(line) for line in run(root, "alerts", env=env).stdout.splitlines()]
    assert [a["type"] for a in alerts].count("rollback") == 1

    # every answer either replica acknowledged is in the shared log exactly once
    answered = [(rid, v) for c in clients for _, rid, status, v in c.answers if status == 200]
    assert len(answered) == sum(len(c.answers) for c in clients)  # zero failed requests
    log = PostgresPredictionLog(settings.storage.url)
    try:
        frame = log.window(utc("2020-01-01"), utc("2100-01-01"), role=("champion",))
    finally:
        log.close()
    assert sorted(frame["request_id"]) == sorted(rid for rid, _ in answered)
    assert {rid.split("-")[0] for rid in frame["request_id"]} == {"a", "b"}
    logged = dict(zip(frame["request_id"], frame["version"], strict=True))
    assert all(logged[rid] == v for rid, v in answered)

    # two monitors judge the shared log at once: both replicas' traffic, each alert once
    monitor_env = {**env, "PRODGUARD_MONITORING__WINDOW__MIN_ROWS": "20"}
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PRODGUARD_")}
    before = len(alerts)
    processes = [
        subprocess.Popen(
            [*CLI, "monitor", "--once", "--json"],
            cwd=root,
            env={**clean, **monitor_env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in processes]
    assert all(p.returncode == 0 for p in processes), outputs
    passes = [json.loads(out) for out, _ in outputs]
    rows = {r["model_version"]: r["rows"] for r in passes[0]["reports"]}
    assert rows == frame["version"].value_counts().to_dict()
    sent = [alert for pass_ in passes for alert in pass_["alerts_sent"]]
    assert sent, "the monitors raised nothing: the test would prove nothing"
    alerts = [json.loads(line) for line in run(root, "alerts", env=env).stdout.splitlines()]
    fresh = [(a["type"], a.get("metric"), a.get("model_version")) for a in alerts[before:]]
    assert len(fresh) == len(sent) == len(set(fresh)), "an alert was raised twice"

    def follow(move: dict, version: int) -> list[float]:
        moved = datetime.fromisoformat(move["time"]).timestamp()
        return [c.first_answer_of(version, moved) - moved for c in clients]

    promoted, rolled = follow(promotion, 3), follow(rollback, 2)
    print(
        f"\n[replicas] alias move -> first answer of the new champion, replica a / b: "
        f"promotion {promoted[0]:.2f} / {promoted[1]:.2f} s, guard rollback "
        f"{rolled[0]:.2f} / {rolled[1]:.2f} s (poll {POLL_S:g} s); {len(answered)} answers, "
        f"all 200, each logged once; two monitors: {len(sent)} alerts, none twice"
    )
