"""Registry faults with real processes.

- A ``prodguard rollback`` killed with SIGKILL between moving the aliases and recording the
  move: ``champion`` still loads, the next guard check records one ``reconcile``, and the runs
  after it record nothing.
- Ten ``prodguard promote`` processes at once on the production registry shape (MLflow store
  and audit log on PostgreSQL): exactly one wins, nine are refused with exit 4, the audit log's
  last record is what MLflow says.
- The MLflow server killed and restarted: a ``prodguard serve`` replica keeps answering,
  promotion and rollback fail fast with exit 5 and one line, the promotion retried after the
  server is back succeeds and the replica follows it; aliases and audit agree.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from prodguard import app, wiring
from prodguard.config import load_settings
from prodguard.errors import RegistryUnavailable
from prodguard.features.feast_adapter import feature_contract
from prodguard.registry.operations import RECONCILE_ACTOR, AliasState
from prodguard.rollout.faults import register_faulty
from prodguard.serving.fast_path import load_verified
from prodguard.training.trainer import pip_requirements
from tests.conftest import FLIGHT_REQUEST, create_pg_database, drop_pg_databases
from tests.e2e.cli import free_port, run, serving
from tests.e2e.test_serving_http import post

pytestmark = pytest.mark.reliability

FIGURES: dict[str, object] = {}
RETENTION = ("--override-standby-retention", "test")  # v1 became standby a moment ago


def private_registry(folder: Path, source: Path, tracking: str | None = None) -> Path:
    """A copy of the served project's registry (v2 champion, v1 standby) in ``folder``;
    ``tracking`` replaces the SQLite store's URI (an MLflow server)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("mlflow.db", "audit.db"):
        shutil.copy(source / ".prodguard" / "mlflow" / name, folder / name)
    store = tracking or f"sqlite:///{folder}/mlflow.db"
    path = folder / "registry.yaml"
    path.write_text(
        f"tracking_uri: {store}\nregistry_uri: {store}\n"
        f"artifact_location: {folder}/artifacts\nexperiment: faults\n"
        f"audit_uri: sqlite:///{folder}/audit.db\n"
    )
    return path


def contract(settings) -> list[list[str]]:
    return feature_contract(wiring.feature_store(settings).versions())


# ---- a move killed before its audit record ------------------------------------------------

KILLED_MOVE = """
import os, signal, sys
from prodguard.registry.audit import AuditLog
from prodguard.registry.mlflow_adapter import MlflowRegistry

point = sys.argv[1]
def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
if point == "before_record":        # aliases moved (and the demoted tag set), no record
    AuditLog.append = die
elif point == "after_champion":     # champion moved, the standby not yet removed
    MlflowRegistry.delete_alias = die
sys.argv = ["prodguard", *sys.argv[2:]]
from prodguard.cli import main
main()
"""


@pytest.mark.parametrize(
    ("point", "moved"),
    [
        ("before_record", AliasState(champion=1)),
        ("after_champion", AliasState(champion=1, standby=1)),
    ],
)
def test_a_move_killed_before_its_record_is_reconciled(
    served_project: Path, tmp_path: Path, point: str, moved: AliasState
) -> None:
    """The rollback tags v2 as demoted before moving the aliases, so the reconciliation knows
    it for an interrupted rollback and completes it (no standby) instead of keeping v2."""
    env = {"PRODGUARD_REGISTRY__CONFIG": str(private_registry(tmp_path, served_project))}
    settings = load_settings(served_project / "prodguard.yaml", environ=env)
    operations = wiring.registry_operations(settings)
    assert operations.state() == AliasState(champion=2, standby=1)
    records = len(operations.history())

    clean = {k: v for k, v in os.environ.items() if not k.startswith("PRODGUARD_")}
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_MOVE, point, "rollback", "--reason", "killed mid-move"],
        cwd=served_project,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert operations.state() == moved  # the aliases moved ...
    assert len(operations.history()) == records  # ... and nothing recorded them
    # champion is on a version that loads at every kill point
    assert load_verified(operations.registry, contract(settings), moved.champion).version == 1

    run(served_project, "guard", "--once", "--json", env=env)
    history = operations.history()
    assert len(history) == records + 1
    reconcile = history[-1]
    assert (reconcile.action, reconcile.actor) == ("reconcile", RECONCILE_ACTOR)
    assert reconcile.from_state == AliasState(champion=2, standby=1).as_dict()
    assert reconcile.evidence["observed"] == moved.as_dict()
    settled = AliasState(champion=1)  # what the rollback would have left
    assert reconcile.to_state == settled.as_dict() == operations.state().as_dict()
    assert "interrupted move or a move made in the MLflow UI" in reconcile.reason
    if moved != settled:
        assert "the interrupted rollback of v2, completed (no standby)" in reconcile.reason

    status = json.loads(run(served_project, "status", "--json", env=env).stdout)
    assert status["reconciled"] is None and status["aliases"] == settled.as_dict()
    run(served_project, "guard", "--once", "--json", env=env)
    assert len(operations.history()) == records + 1  # reconciled once, not again


def test_a_move_made_in_the_mlflow_ui_is_recorded_not_undone(
    served_project: Path, tmp_path: Path
) -> None:
    env = {"PRODGUARD_REGISTRY__CONFIG": str(private_registry(tmp_path, served_project))}
    operations = wiring.registry_operations(
        load_settings(served_project / "prodguard.yaml", environ=env)
    )
    operations.registry.set_alias("candidate", 1)  # what the UI does: MLflow only
    expected = AliasState(champion=2, standby=1)  # read before the UI move
    with pytest.raises(Exception, match="aliases moved since they were read"):
        operations.rollback("alice", "stale", expected=expected)
    record = operations.history()[-1]
    assert record.action == "reconcile"  # kept although the rollback was refused
    assert record.to_state == {"champion": 2, "standby": 1, "candidate": 1}
    assert operations.reconcile() is None
    operations.rollback("alice", "fresh")  # the chain goes on from the UI's state
    last, before = operations.history()[-1], operations.history()[-2]
    assert before.to_state == last.from_state and last.to_state == operations.state().as_dict()


# ---- ten promotions at once on PostgreSQL -------------------------------------------------

AT_ONCE = """
import pathlib, sys, time
ready, go = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
import feast, mlflow, sqlalchemy, psycopg  # the slow imports, before the start line
import prodguard.app, prodguard.cli, prodguard.registry.mlflow_adapter
ready.touch()
deadline = time.monotonic() + 300
while not go.exists() and time.monotonic() < deadline:
    time.sleep(0.005)
sys.argv = ["prodguard", *sys.argv[3:]]
prodguard.cli.main()
"""


def copy_version(source, target, version: int) -> int:
    """Register ``source``'s version in ``target`` (same model, tags and artifacts)."""
    from prodguard.registry.lineage import COPIED_ARTIFACTS, NOT_COPIED

    info = source.registry.version(version)
    model = source.registry.load_model(version)
    artifacts = {
        name: source.registry.load_json_artifact(version, name) for name in COPIED_ARTIFACTS[:2]
    }
    tags = {
        k: v for k, v in info.tags.items() if k.startswith("prodguard.") and k not in NOT_COPIED
    }
    fallbacks = json.loads(info.tags["prodguard.fallbacks"])
    import pandas as pd

    columns = [name for name, _ in json.loads(info.tags["prodguard.input_contract"])]
    frame = pd.DataFrame([{c: fallbacks.get(c) for c in columns}], columns=columns)
    return target.registry.log_version(model, frame, {}, {}, tags, artifacts, pip_requirements())


@pytest.fixture(scope="module")
def pg_registry(served_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """MLflow's store and the audit log on PostgreSQL (their own databases, as in production),
    v1 champion and v2 candidate copied from the served project."""
    folder = tmp_path_factory.mktemp("pg_registry")
    (mlflow_db, mlflow_url), (audit_db, audit_url) = (
        create_pg_database("mlflow"),
        create_pg_database("audit"),
    )
    config = folder / "registry.yaml"
    config.write_text(
        f"tracking_uri: {mlflow_url}\nregistry_uri: {mlflow_url}\n"
        f"artifact_location: {folder}/artifacts\nexperiment: race\naudit_uri: {audit_url}\n"
    )
    env = {"PRODGUARD_REGISTRY__CONFIG": str(config)}
    try:
        settings = load_settings(served_project / "prodguard.yaml", environ=env)
        source = wiring.registry_operations(load_settings(served_project / "prodguard.yaml"))
        operations = wiring.registry_operations(settings, with_checks=True)
        assert [copy_version(source, operations, v) for v in (1, 2)] == [1, 2]
        operations.promote("tests", "setup", version=1)
        operations.set_candidate(2, "tests", "setup")
        yield env, operations
    finally:
        drop_pg_databases([mlflow_db, audit_db])


@pytest.mark.postgres
def test_ten_concurrent_promotions_exactly_one_wins(
    pg_registry, served_project: Path, tmp_path: Path
) -> None:
    env, operations = pg_registry
    assert operations.state() == AliasState(champion=1, candidate=2)
    before = len(operations.history())
    go = tmp_path / "go"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PRODGUARD_")}
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                AT_ONCE,
                str(tmp_path / f"ready-{n}"),
                str(go),
                "promote",
                "--actor",
                f"operator-{n}",
                "--reason",
                f"race {n}",
            ],
            cwd=served_project,
            env={**clean, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(10)
    ]
    deadline = time.monotonic() + 240
    while sum((tmp_path / f"ready-{n}").exists() for n in range(10)) < 10:
        assert time.monotonic() < deadline, "the promote processes did not start"
        time.sleep(0.1)
    began = time.monotonic()
    go.touch()
    results = [(p.wait(timeout=300), *p.communicate()) for p in processes]
    FIGURES["ten_promotions_s"] = round(time.monotonic() - began, 2)
    codes = sorted(code for code, _, _ in results)
    assert codes == [0] + [4] * 9, [(c, e[-300:]) for c, _, e in results]
    for code, _, stderr in results:
        if code == 4:
            lines = stderr.strip().splitlines()
            assert len(lines) == 1 and "aliases moved since they were read" in lines[0]
    history = operations.history()
    assert [r.action for r in history[before:]] == ["promote"]  # one move, no reconcile
    (winner,) = [out for code, out, _ in results if code == 0]
    assert f"audit #{history[-1].id}" in winner and history[-1].actor in winner
    assert history[-1].to_state == operations.state().as_dict()
    assert operations.state() == AliasState(champion=2, standby=1)
    print("figures:", FIGURES)


# ---- the MLflow server down and back -----------------------------------------------------


class MlflowServer:
    """``mlflow server`` on a SQLite store, killed with SIGKILL and started again on the same
    port: the simplest real registry outage."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder, self.port = folder, port
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = [
            str(Path(sys.executable).parent / "mlflow"), "server",
            "--backend-store-uri", f"sqlite:///{self.folder}/mlflow.db",
            "--default-artifact-root", str(self.folder / "artifacts"),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip
        env = {
            **os.environ,
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        self.process = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2)
                return
            except OSError:
                assert self.process.poll() is None, "mlflow server exited"
                assert time.monotonic() < deadline, "mlflow server not up within 120 s"
                time.sleep(0.2)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


class Client:
    """/predict in a loop until stopped: (wall time, status, served version)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.answers: list[tuple[float, int, int | None]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            status, body = post(self.base, "/predict", {**FLIGHT_REQUEST, "request_id": f"c-{n}"})
            version = body.get("version") if isinstance(body, dict) else None
            self.answers.append((time.time(), status, version))
            time.sleep(0.02)

    def between(self, start: float, end: float) -> list[tuple[float, int, int | None]]:
        return [a for a in self.answers if start <= a[0] < end]


@pytest.mark.postgres
def test_registry_down_serving_goes_on_and_moves_fail_fast(
    served_project: Path, tmp_path: Path, pg_database
) -> None:
    port = free_port()
    folder = tmp_path / "registry"
    config = private_registry(folder, served_project, tracking=f"http://127.0.0.1:{port}")
    env = {
        "PRODGUARD_REGISTRY__CONFIG": str(config),
        "PRODGUARD_SERVING__POLL_SECONDS": "0.5",
        # the replica's prediction log and alerts in a database of its own
        "PRODGUARD_STORAGE__URL": pg_database("records"),
    }
    settings = load_settings(served_project / "prodguard.yaml", environ=env)
    log = "registry-down-serve.log"
    server = MlflowServer(folder, port)
    server.start()
    try:
        operations = wiring.registry_operations(settings)
        assert register_faulty(operations, 2, 0.02, "tests", pip_requirements()) == 3
        with serving(served_project, env, log_name=log) as base:
            client = Client(base)
            client.thread.start()
            time.sleep(2)
            server.kill()
            down = time.time()
            began = time.time()
            with pytest.raises(RegistryUnavailable, match="not reachable"):
                wiring.registry_operations(settings, with_checks=True).promote(
                    "tests", "while down", version=3, override_retention="test"
                )
            FIGURES["promote_fails_in_process_s"] = round(time.time() - began, 2)
            began = time.time()
            failed = run(
                served_project,
                "promote",
                "--version",
                "3",
                "--reason",
                "down",
                *RETENTION,
                env=env,
                expect=5,
            )
            FIGURES["promote_cli_fails_s"] = round(time.time() - began, 2)
            assert "not reachable" in failed.stderr and "retry" in failed.stderr
            assert len(failed.stderr.strip().splitlines()) == 1
            run(served_project, "rollback", "--reason", "down", env=env, expect=5)
            server.start()
            up = time.time()
            outage = client.between(down, up)

            began = time.time()
            run(
                served_project, "promote", "--version", "3", "--reason", "back", *RETENTION, env=env
            )
            promoted = time.time()
            FIGURES["promote_after_return_cli_s"] = round(promoted - began, 2)
            deadline = promoted + 30
            while not client.between(promoted, time.time() + 1) or all(
                v != 3 for _, _, v in client.between(promoted, time.time() + 1)
            ):
                assert time.time() < deadline, "the replica did not follow the promotion"
                time.sleep(0.05)
            first = next(t for t, _, v in list(client.answers) if v == 3)  # v3 only after it
            committed = operations.history()[-1].time.timestamp()  # the promotion's commit
            FIGURES["follow_after_commit_s"] = round(first - committed, 2)
            client.stop.set()
            client.thread.join(timeout=30)
        FIGURES["outage_s"] = round(up - down, 1)
        FIGURES["answers_during_outage"] = len(outage)
        FIGURES["answers_total"] = len(client.answers)
        assert outage and all(status == 200 and version == 2 for _, status, version in outage)
        assert all(status == 200 for _, status, _ in client.answers)
        # the replica's durable alert record: the outage alerted once for the whole outage (the
        # log lines are counted by the in-process follower test below), no version refused
        kinds = [a["type"] for a in app.alerts(settings)]
        assert kinds.count("registry_unreachable") == 1 and "model_refused" not in kinds
        history = operations.history()
        assert [r.action for r in history[-1:]] == ["promote"]
        assert history[-1].to_state == operations.state().as_dict()
        assert operations.state() == AliasState(champion=3, standby=2)
    finally:
        server.kill()
    print("figures:", FIGURES)


# ---- the follower through an outage (in process, no stores) --------------------------------


def test_the_follower_says_an_outage_once_and_retries_loads(caplog) -> None:
    from prodguard.alerts import Alerter
    from prodguard.rollout.policy import TrafficPolicy
    from prodguard.serving.models import LoadedModel, ModelFollower

    sent: list = []
    outage = {"down": False, "loads_fail": True}

    def targets():
        if outage["down"]:
            raise RegistryUnavailable("reading aliases failed: the registry is not reachable")
        return {"champion": 1, "standby": None, "candidate": None}, TrafficPolicy()

    def load(version: int) -> LoadedModel:
        if outage["loads_fail"]:
            raise RegistryUnavailable("downloading model version 1 failed: not reachable")
        return LoadedModel(version, None, (), frozenset(), {}, {})

    alerter = Alerter([type("Sink", (), {"send": lambda self, alert: sent.append(alert)})()])
    follower = ModelFollower(targets, load, alerter, poll_seconds=0.5)
    caplog.set_level("WARNING", logger="prodguard.serving")
    for _ in range(3):
        follower.poll()  # the load fails on the registry: retried, never refused
    assert follower.state.champion is None and not sent
    assert caplog.text.count("retrying every poll") == 1
    outage["loads_fail"] = False
    follower.poll()
    assert follower.state.champion.version == 1
    outage["down"] = True
    for _ in range(5):
        follower.poll()
    assert [a.type for a in sent] == ["registry_unreachable"]
    assert caplog.text.count("alias poll failed") == 1
    assert follower.state.champion.version == 1  # still serving
    outage["down"] = False
    follower.poll()
    assert caplog.text.count("registry readable again") == 1 and "5 failed polls" in caplog.text
