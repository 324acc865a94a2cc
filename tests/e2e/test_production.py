"""The production stack of ``docker-compose.yml``, run natively on this machine's PostgreSQL and
Redis (no Docker engine here): the processes the compose file starts, with its command lines and
environments, rewritten only where one host must differ from a network of containers.

From docker-compose.yml (interpolated with a test ``.env`` built from ``.env.example``, every
secret a fresh random URL-safe password) and the Dockerfile's ``ENV`` of each image:
- ``deploy/postgres/init.sh`` itself creates the roles and databases on the local server, their
  names made unique per run (roles are global to a cluster; runs may overlap);
- ``mlflow``: ``mlflow server --app-name basic-auth`` on PostgreSQL with proxied artifacts, and
  ``mlflow-users``: ``deploy/mlflow/create_user.py`` creates prodguard's service account;
- ``prodguard-a`` and ``prodguard-b`` (``prodguard serve``), ``guard`` (run twice at once),
  ``monitor`` (its loop, twice at once, each serving its Prometheus gauges), and the
  ``prodguard-cli`` environment for one-off commands. prodguard talks to MLflow over HTTP as the
  service account (``MLFLOW_TRACKING_USERNAME/PASSWORD``), like the containers.

Rewritten: the service host names (postgres, redis, mlflow) to 127.0.0.1 and the local ports;
container paths (/app, /srv/prodguard, /mlartifacts, mounted files) to the test's project copy
and temporary folders; fixed ports to free ones; role and database names to unique ones; the
loops' ``--every`` to seconds. On top, a few settings make the story fit in a test (daily
windows, a 1 s alias poll, fewer requests per trigger, no drill before a promotion).

The setup data (materialize to Redis, train v1 and v2, promote, baseline, register the faulty
v3) is written in-process with the ``prodguard-cli`` environment: the same code as the CLI
commands, without a process start (~7 s of imports) for each of the seven steps.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import (
    DAILY_WINDOWS,
    FLIGHT_REQUEST,
    PG_ADMIN,
    ROOT,
    delete_redis_keys,
    drop_pg_databases,
    make_project,
    utc,
)
from tests.e2e.cli import free_port, run
from tests.e2e.test_serving_http import post
from tests.unit.test_compose import _command, _env_example, _environment, _interpolate, _secret

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis]
POLL_S = 1.0
GUARD_EVERY_S, MONITOR_EVERY_S = 0.5, 2.0
BIN = Path(sys.executable).parent
# what the test changes on top of the stack's settings, so the story fits in a minute
TEST_SETTINGS = {
    **DAILY_WINDOWS,
    "PRODGUARD_SERVING__POLL_SECONDS": str(POLL_S),
    "PRODGUARD_ROLLOUT__TRIGGERS__MIN_REQUESTS": "40",
    # production requires a passed drill before a promotion (test_guard covers that gate);
    # here the subject is the stack: backends, replicas, loops
    "PRODGUARD_ROLLOUT__REQUIRE_DRILL": "false",
}
# the services' host names on the compose network, and where they are on this host
LOCAL_SERVERS = {"postgres": 5432, "redis": 6379}


# ---- docker-compose.yml, localized -----------------------------------------------------------


def image_env(target: str) -> dict[str, str]:
    """The ``ENV`` of a Dockerfile stage, its parent stages' included."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text(encoding="utf-8"))
    stages: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in text.splitlines():
        instruction, _, rest = line.strip().partition(" ")
        if instruction.upper() == "FROM":
            words = rest.split()
            current = dict(stages.get(words[0], {}))
            if len(words) == 3 and words[1].upper() == "AS":
                stages[words[2]] = current
        elif instruction.upper() == "ENV":
            current.update(word.split("=", 1) for word in shlex.split(rest))
    return stages[target]


@dataclass
class Stack:
    """docker-compose.yml with a test .env, each service's process as it would run natively."""

    root: Path  # the project copy: the image's /app
    tmp: Path  # volumes, mounted files, the containers' other folders
    dotenv: dict[str, str]
    names: dict[str, str]  # role/database name in the stack -> unique name on the local server
    compose: dict[str, Any] = field(init=False)
    ports: dict[tuple[str, int], int] = field(default_factory=dict)  # (service, port) -> local
    volumes: dict[str, Path] = field(default_factory=dict)  # named volume -> local folder
    mounts: dict[str, dict[str, Path]] = field(default_factory=dict)  # service -> path -> local

    def __post_init__(self) -> None:
        raw = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
        self.compose = _interpolate(raw, self.dotenv)
        for name in self.compose["volumes"]:
            self.volumes[name] = self.tmp / "volumes" / name
            self.volumes[name].mkdir(parents=True)
        for name, service in self.services.items():
            if "build" not in service:  # postgres, redis: this machine's servers; the rest
                continue  # (nginx, prometheus, grafana) are not run here
            for port in [*service.get("expose", []), *service.get("ports", [])]:
                self.ports[(name, int(str(port).rsplit(":", 1)[-1]))] = free_port()
            # the image: /app/deploy is not in the project copy (the Dockerfile copies one file)
            mounts = {"/app/deploy": ROOT / "deploy", "/app": self.root}
            for volume in service.get("volumes", []):
                source, target = volume.split(":")[:2]
                if source.startswith("./"):  # a mounted config file: a localized copy
                    local = self.tmp / "mounts" / name / Path(source).name
                    local.parent.mkdir(parents=True, exist_ok=True)
                    text = (ROOT / source).read_text(encoding="utf-8")
                    local.write_text(self.localize(text, {}), encoding="utf-8")
                else:
                    local = self.volumes[source]
                mounts[target] = local
            self.mounts[name] = mounts

    @property
    def services(self) -> dict[str, dict[str, Any]]:
        return self.compose["services"]

    def localize(self, text: str, mounts: dict[str, Path]) -> str:
        """Host names, role and database names and container paths of the stack -> local."""

        def url(match: re.Match[str]) -> str:
            user, db, password = match.group("user"), match.group("db"), match.group("pw") or ""
            host = f"127.0.0.1:{LOCAL_SERVERS['postgres']}"
            return f"{match.group('scheme')}{self.names[user]}{password}@{host}/{self.names[db]}"

        text = re.sub(
            r"(?P<scheme>postgresql(?:\+\w+)?://)(?P<user>\w+)(?P<pw>:[^@/\s]*)?@postgres:5432/"
            r"(?P<db>\w+)",
            url,
            text,
        )

        def host(match: re.Match[str]) -> str:
            name, port = match.group(1), int(match.group(2))
            return f"127.0.0.1:{LOCAL_SERVERS.get(name) or self.ports[(name, port)]}"

        text = re.sub(r"(?<![\w.-])(postgres|redis|mlflow):(\d+)", host, text)
        if not text.startswith("/"):
            return text
        for container in sorted(mounts, key=len, reverse=True):
            if text == container or text.startswith(container + "/"):
                return str(mounts[container]) + text[len(container) :]
        return str(self.tmp / "containers" / text.lstrip("/"))  # the container's own folders

    def process(self, name: str, every: float | None = None) -> tuple[list[str], dict[str, str]]:
        """Command line and environment of a service (image ENV, then compose's), localized."""
        service, mounts = self.services[name], self.mounts[name]
        argv = [self.localize(word, mounts) for word in _command(service)]
        for option in ("--port", "--metrics-port"):
            if option in argv:
                at = argv.index(option) + 1
                argv[at] = str(self.ports[(name, int(argv[at]))])
        if every is not None:
            argv[argv.index("--every") + 1] = f"{every:g}"
        argv[0] = sys.executable if argv[0] == "python" else str(BIN / argv[0])
        env = {**image_env(service["build"]["target"]), **_environment(service)}
        env = {key: self.localize(value, mounts) for key, value in env.items()}
        for key in ("HOME",):
            Path(env[key]).mkdir(parents=True, exist_ok=True)
        if "PRODGUARD_ENV" in env:
            env.update(TEST_SETTINGS)
        return argv, env

    def environ(self, env: dict[str, str]) -> dict[str, str]:
        """A process's whole environment: this one's (PATH, ...) without its PRODGUARD_* and
        MLFLOW_* variables, then the service's."""
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("PRODGUARD_", "MLFLOW_"))}
        return {**keep, **env}

    def start(
        self, name: str, log: str, every: float | None = None, extra: dict[str, str] | None = None
    ) -> subprocess.Popen:
        """Start a service's process in a session of its own (stopped with :func:`stop`):
        stdout to <project>/<log>.out, stderr to <log>.log."""
        argv, env = self.process(name, every)
        env.update(extra or {})
        with (self.root / f"{log}.out").open("w") as out, (self.root / f"{log}.log").open("w") as e:
            return subprocess.Popen(
                argv,
                cwd=self.root,  # the image's WORKDIR /app
                env=self.environ(env),
                stdout=out,
                stderr=e,
                start_new_session=True,
            )

    def port(self, name: str) -> int:
        return next(local for (service, _), local in self.ports.items() if service == name)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port(name)}"

    def cli_env(self) -> dict[str, str]:
        """The environment of `docker compose run prodguard-cli prodguard ...`."""
        return self.process("prodguard-cli")[1]


def dotenv_for_test(namespace: str) -> dict[str, str]:
    """.env from .env.example: a random URL-safe password for each empty secret."""
    values = {
        key: value or (secrets.token_urlsafe(24) if _secret(key) else "")
        for key, value in _env_example().items()
    }
    values["PRODGUARD_FEAST_PROJECT"] = namespace  # the Feast project ends every Redis key
    return values


def init_databases(stack: Stack) -> None:
    """deploy/postgres/init.sh on the local server, role and database names made unique."""
    script = (ROOT / "deploy" / "postgres" / "init.sh").read_text(encoding="utf-8")
    head, sql, tail = re.split(r"(?<=<<'SQL'\n)|(?=^SQL$)", script, flags=re.M)
    pattern = r"\b(" + "|".join(map(re.escape, stack.names)) + r")\b"
    sql = re.sub(pattern, lambda m: stack.names[m.group(1)], sql)
    (stack.tmp / "init.sh").write_text(head + sql + tail)
    env = {
        **_environment(stack.services["postgres"]),
        "PGHOST": "127.0.0.1",
        "PGPORT": str(LOCAL_SERVERS["postgres"]),
    }
    done = subprocess.run(
        ["bash", str(stack.tmp / "init.sh")],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def drop_roles(roles: list[str]) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
        for role in roles:
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')


def stop(process: subprocess.Popen) -> None:
    """Stop a process started by :meth:`Stack.start` and every process of its session."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):  # workers left behind
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def wait_http(url: str, process: subprocess.Popen, log: Path, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[:3]} exited: {log.read_text()[-3000:]}")
        time.sleep(0.25)
    raise RuntimeError(f"{url} not ready within {seconds:g} s: {log.read_text()[-3000:]}")


def mlflow_get(base: str, path: str, credentials: tuple[str, str] | None) -> tuple[int, Any]:
    request = urllib.request.Request(f"{base}{path}")
    if credentials:
        token = base64.b64encode(":".join(credentials).encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, None


def metrics(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """A Prometheus /metrics page: sample name -> [(labels, value)]."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


# ---- the stack -------------------------------------------------------------------------------


@dataclass
class Running:
    stack: Stack
    settings: Any
    mlflow: str  # base URL of the MLflow server
    service_account: tuple[str, str]

    @property
    def root(self) -> Path:
        return self.stack.root

    @property
    def data(self) -> Path:
        return self.stack.volumes["prodguard-data"]


@pytest.fixture(scope="module")
def production(ingested: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """The stack's databases, MLflow server and service account; Jan-Apr in the offline store
    (on the data volume), materialized to Redis; v1, v2 trained through the MLflow server, v2
    champion and v1 standby, v2 baselined on April 1-4; v3 = v2 shifted by +0.4."""
    from prodguard import app, wiring
    from prodguard.config import load_settings
    from prodguard.monitoring.jobs import record_baseline
    from prodguard.rollout.faults import register_faulty
    from prodguard.training.trainer import pip_requirements

    tmp = tmp_path_factory.mktemp("production")
    run_id = uuid.uuid4().hex[:12]
    namespace = f"pgt_{run_id}"
    names = {n: f"pgt_{n}_{run_id}" for n in ("prodguard", "mlflow", "mlflow_auth")}
    stack = Stack(make_project(tmp / "project"), tmp, dotenv_for_test(namespace), names)
    data = stack.volumes["prodguard-data"]
    for folder in ("offline", "state"):  # what ingestion left on the data volume
        shutil.copytree(ingested / ".prodguard" / folder, data / folder)
    dotenv = stack.dotenv
    service_account = (dotenv["MLFLOW_SERVICE_USERNAME"], dotenv["MLFLOW_SERVICE_PASSWORD"])
    server = None
    laps: list[str] = []
    mark = [time.monotonic()]

    def lap(step: str) -> None:  # how long each step took, printed once set up
        laps.append(f"{step} {time.monotonic() - mark[0]:.0f} s")
        mark[0] = time.monotonic()

    try:
        init_databases(stack)
        server = stack.start("mlflow", "mlflow")
        lap("init.sh")
        env = stack.cli_env()
        settings = load_settings(stack.root / "prodguard.yaml", environ=env)
        assert settings.environment == "production"
        assert settings.paths.data_dir.resolve() == data.resolve()
        wiring.feature_store(settings).materialize(until=utc("2013-05-01"))  # meanwhile
        lap("materialize")

        mlflow = stack.url("mlflow")
        wait_http(f"{mlflow}/health", server, stack.root / "mlflow.log")
        lap("MLflow server up")
        argv, users_env = stack.process("mlflow-users")
        done = subprocess.run(
            argv, cwd=stack.root, env=stack.environ(users_env), capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        lap("service account")
        with pytest.MonkeyPatch.context() as patch:  # the container's process environment
            for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
                patch.setenv(key, env[key])
            app.train(settings, utc("2013-01-01"), utc("2013-03-01"), actor="tests")
            app.train(settings, utc("2013-01-01"), utc("2013-04-01"), actor="tests")
            lap("train v1, v2")
            operations = wiring.registry_operations(settings, with_checks=True)
            operations.promote("tests", "setup", version=1)
            operations.promote("tests", "setup", version=2)
            record_baseline(settings, utc("2013-04-01"), utc("2013-04-04"), version=2)
            assert register_faulty(operations, 2, 0.4, "tests", pip_requirements()) == 3
            lap("promote, baseline, faulty v3")
        print(f"\n[stack setup] {', '.join(laps)}")
        yield Running(stack, settings, mlflow, service_account)
    finally:
        if server is not None:
            stop(server)
        drop_pg_databases([names["prodguard"], names["mlflow"], names["mlflow_auth"]])
        drop_roles([names["prodguard"], names["mlflow"]])
        delete_redis_keys(namespace)


def aliases_over_rest(production: Running) -> dict[str, int]:
    path = f"/api/2.0/mlflow/registered-models/get?name={production.settings.model.name}"
    status, _ = mlflow_get(production.mlflow, path, None)
    assert status == 401, "the MLflow server answered a caller without credentials"
    status, body = mlflow_get(production.mlflow, path, production.service_account)
    assert status == 200
    return {a["alias"]: int(a["version"]) for a in body["registered_model"].get("aliases", [])}


def test_nothing_of_production_is_kept_in_local_files(production: Running) -> None:
    data = production.data
    assert not (data / "predictions.db").exists() and not (data / "mlflow").exists()
    assert not (data / "feast").exists() and not (data / "alerts.jsonl").exists()
    env = production.stack.cli_env()
    status = json.loads(run(production.root, "status", "--json", env=env).stdout)
    assert status["environment"] == "production"
    assert status["aliases"] == {"champion": 2, "standby": 1, "candidate": None}
    assert status["stores"]["records"].startswith("postgresql+psycopg://")
    assert status["stores"]["online_store"].startswith("redis ")
    # the registry is the MLflow server: its REST API, as the service account, says the same
    assert aliases_over_rest(production) == {"champion": 2, "standby": 1}
    assert any(production.stack.volumes["mlflow-artifacts"].rglob("*")), "artifacts not proxied"
    assert not (production.root / "mlflow-artifacts:").exists()  # a URI, not a local folder


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
def replicas(stack: Stack) -> Iterator[list[Client]]:
    """prodguard-a and prodguard-b, both cold starts at once, each with a client."""
    names = ["prodguard-a", "prodguard-b"]
    processes = [stack.start(name, name) for name in names]
    clients: list[Client] = []
    try:
        for name, process in zip(names, processes, strict=True):  # cold starts overlap
            wait_http(f"{stack.url(name)}/readyz", process, stack.root / f"{name}.log")
        clients = [Client(stack.url(name), name[-1]) for name in names]
        for client in clients:
            client.thread.start()
        yield clients
    finally:
        for client in clients:
            client.stop.set()
            client.thread.join(timeout=30)
        for process in processes:
            stop(process)


def wait_for(condition, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_two_replicas_share_moves_log_guard_and_monitors(production: Running) -> None:
    from prodguard.serving.prediction_log import PostgresPredictionLog

    stack, root, settings = production.stack, production.root, production.settings
    env = stack.cli_env()
    with replicas(stack) as clients:
        wait_for(lambda: all(c.answers and c.answers[-1][3] == 2 for c in clients))

        # a user promotes the faulty v3 with the CLI; both replicas follow
        run(root, "promote", "--version", "3", "--reason", "faulty on purpose",
            "--override-standby-retention", "replica test", env=env)  # fmt: skip
        wait_for(lambda: all(c.answers[-1][3] == 3 for c in clients))

        # the guard service, twice at once: one rolls back, the other sees the aliases moved
        guards = [stack.start("guard", f"guard-{n}", every=GUARD_EVERY_S) for n in "ab"]
        try:
            wait_for(lambda: all(c.answers[-1][3] == 2 for c in clients))
        finally:
            for guard in guards:
                stop(guard)
        for client in clients:
            client.stop.set()
            client.thread.join(timeout=30)
        # each replica's /metrics counted every answer it gave, by champion version
        for name, client in zip(["prodguard-a", "prodguard-b"], clients, strict=True):
            counted = metrics(f"{stack.url(name)}/metrics")["prodguard_predictions_total"]
            by_version: dict[str, float] = {}
            for labels, value in counted:
                if labels["role"] != "champion":  # the standby's shadow scores
                    continue
                by_version[labels["version"]] = by_version.get(labels["version"], 0) + value
            answered_by_version: dict[str, int] = {}
            for _, _, _, version in client.answers:
                answered_by_version[str(version)] = answered_by_version.get(str(version), 0) + 1
            assert by_version == answered_by_version, name

    audit = json.loads(run(root, "audit", "--json", env=env).stdout)
    promotion, rollback = audit[-2:]
    assert promotion["action"] == "promote" and promotion["to_state"]["champion"] == 3
    assert rollback["action"] == "rollback" and rollback["actor"] == "prodguard-guard"
    assert rollback["from_state"]["champion"] == 3 and rollback["to_state"]["champion"] == 2
    assert [r["action"] for r in audit].count("rollback") == 1
    guard_output = "".join((root / f"guard-{n}.out").read_text() for n in "ab")
    assert guard_output.count(" rolled_back (") == 1, guard_output[-3000:]
    alerts = [json.loads(line) for line in run(root, "alerts", env=env).stdout.splitlines()]
    assert [a["type"] for a in alerts].count("rollback") == 1
    status = json.loads(run(root, "status", "--json", env=env).stdout)
    assert aliases_over_rest(production) == {
        alias: version for alias, version in status["aliases"].items() if version is not None
    }
    assert status["aliases"]["champion"] == 2

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

    # the monitor service's loop, twice at once over the shared log: both replicas' traffic,
    # gauges served on its metrics port, each alert raised once over several passes
    before = len(alerts)
    (metrics_port,) = (port for service, port in stack.ports if service == "monitor")
    monitors: list[tuple[str, subprocess.Popen]] = []
    few_rows = {"PRODGUARD_MONITORING__WINDOW__MIN_ROWS": "20"}  # a minute of traffic
    try:
        for n in "ab":
            stack.ports[("monitor", metrics_port)] = free_port()  # one port each on one host
            process = stack.start("monitor", f"monitor-{n}", MONITOR_EVERY_S, few_rows)
            monitors.append((stack.url("monitor"), process))
        pages = [
            monitor_pages(url, process, root / f"monitor-{n}.log")
            for (url, process), n in zip(monitors, "ab", strict=True)
        ]
    finally:
        for _, process in monitors:
            stop(process)
    for page in pages:
        rows = {int(labels["model_version"]): int(value)
                for labels, value in page["prodguard_monitor_window_rows"]}  # fmt: skip
        assert rows == frame["version"].value_counts().to_dict()
        assert {"prodguard_monitor_status", "prodguard_monitor_value"} <= set(page)
        assert {"prodguard_monitor_threshold", "prodguard_monitor_window_status"} <= set(page)
    sent = sum(value for page in pages for _, value in page.get("prodguard_alerts_total", []))
    assert sent, "the monitors raised nothing: the test would prove nothing"
    alerts = [json.loads(line) for line in run(root, "alerts", env=env).stdout.splitlines()]
    fresh = [(a["type"], a.get("metric"), a.get("model_version")) for a in alerts[before:]]
    assert len(fresh) == sent == len(set(fresh)), "an alert was raised twice"

    def follow(move: dict, version: int) -> list[float]:
        moved = datetime.fromisoformat(move["time"]).timestamp()
        return [c.first_answer_of(version, moved) - moved for c in clients]

    promoted, rolled = follow(promotion, 3), follow(rollback, 2)
    print(
        f"\n[replicas] alias move -> first answer of the new champion, replica a / b: "
        f"promotion {promoted[0]:.2f} / {promoted[1]:.2f} s, guard rollback "
        f"{rolled[0]:.2f} / {rolled[1]:.2f} s (poll {POLL_S:g} s); {len(answered)} answers, "
        f"all 200, each logged once and counted in /metrics; two monitor loops: {sent:g} "
        f"alerts, none twice; MLflow over HTTP as the service account (401 without)"
    )


def monitor_pages(url: str, process: subprocess.Popen, log: Path) -> dict:
    """The monitor's /metrics once it has finished two passes (the second alerts nothing new)."""
    wait_http(f"{url}/metrics", process, log)
    runs: set[float] = set()
    deadline = time.monotonic() + 180
    while len(runs) < 2:
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        assert process.poll() is None, log.read_text()[-3000:]
        page = metrics(f"{url}/metrics")
        last = page.get("prodguard_monitor_last_run_timestamp_seconds", [])
        runs.update(v for _, v in last if v > 0)  # 0 before the first pass
        time.sleep(0.25)
    return metrics(f"{url}/metrics")
