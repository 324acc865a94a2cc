"""PostgreSQL restarted under load in the production configuration: two ``prodguard serve``
replicas keep their records (``storage.url``: prediction log, request errors, alerts and their
gate) in a PostgreSQL cluster of the test's own, which is restarted (``pg_ctl restart -m fast``)
and later stopped hard (``-m immediate``) and started again while both replicas are loaded.

The machine's shared server is never touched: the cluster is initdb'd in a temporary folder as
the ``postgres`` user (initdb refuses root), on a free port, trust authentication, loopback only.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from prodguard import wiring
from prodguard.config import load_settings
from prodguard.service_process import free_port
from tests.conftest import copy_project, utc
from tests.reliability.test_serving_faults import Load, start

pytestmark = [pytest.mark.reliability, pytest.mark.e2e, pytest.mark.postgres]
PG_BIN = Path("/usr/lib/postgresql/15/bin")


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own, driven with ``pg_ctl``."""

    def __init__(self) -> None:
        if not (PG_BIN / "initdb").exists() or shutil.which("runuser") is None:
            pytest.skip("PostgreSQL 15 server binaries (or runuser) are not installed")
        self.folder = Path(tempfile.mkdtemp(prefix="pgt_cluster_"))
        shutil.chown(self.folder, "postgres")
        self.data, self.port = self.folder / "data", free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self._pg("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "-E", "UTF8")

    def _pg(self, tool: str, *args: object) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(PG_BIN / tool), *map(str, args)],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def _ctl(self, action: str, *args: str) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
        self._pg("pg_ctl", action, "-D", self.data, "-l", self.folder / "server.log", "-w",
                 "-o", options, *args)  # fmt: skip

    def start(self) -> None:
        self._ctl("start")

    def restart(self, mode: str) -> None:
        self._ctl("restart", "-m", mode)

    def stop(self, mode: str) -> None:
        self._ctl("stop", "-m", mode)

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    cluster = PrivatePostgres()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


def logged_answers(url: str) -> Counter:
    from prodguard.serving.prediction_log import ANSWERS, PostgresPredictionLog

    log = PostgresPredictionLog(url)
    try:
        frame = log.window(utc("2000-01-01"), utc("2100-01-01"), role=ANSWERS)
    finally:
        log.close()
    return Counter(frame["request_id"])


def first_200_after(outcomes: list, since: float) -> float | None:
    return min((t for t, _, status, _ in outcomes if status == 200 and t >= since), default=None)


def test_postgres_restart_under_load_loses_nothing_acknowledged(
    served_project: Path, tmp_path: Path
) -> None:
    root = copy_project(served_project, tmp_path / "project")
    settings = load_settings(root / "prodguard.yaml", environ={})
    wiring.feature_store(settings).materialize(until=utc("2013-05-01"))
    with private_postgres() as pg:
        env = {"PRODGUARD_STORAGE__URL": pg.url}
        ports = [free_port(), free_port()]
        replicas = [start(root, env, port, f"serve-{k}.log") for k, port in enumerate(ports)]
        try:
            with Load(ports[0], rate=30, clients=4, prefix="a") as a, \
                    Load(ports[1], rate=30, clients=4, prefix="b") as b:  # fmt: skip
                time.sleep(4)
                fast_at = time.monotonic()
                pg.restart("fast")  # returns once the server accepts connections again
                fast_up = time.monotonic()
                time.sleep(5)
                down_at = time.monotonic()
                pg.stop("immediate")  # a crash: no shutdown checkpoint, recovery at start
                time.sleep(3)
                starting_at = time.monotonic()
                pg.start()
                up_at = time.monotonic()
                time.sleep(6)
        finally:
            for replica in replicas:
                replica.stop()
        logged = logged_answers(pg.url)

    outcomes = {"a": a.outcomes, "b": b.outcomes}
    every = [o for load in outcomes.values() for o in load]
    statuses = Counter(status for _, _, status, _ in every)
    acknowledged = {rid for _, rid, status, _ in every if status == 200}
    assert set(statuses) <= {200, 503}, statuses  # refused loudly or answered, nothing else
    assert acknowledged <= set(logged), "a 200 whose record is missing"
    assert set(logged.values()) == {1}, "a prediction logged twice"
    during = [status for t, _, status, _ in every if down_at + 0.2 < t < starting_at]
    assert during and set(during) == {503}, "a request during the outage got a 200"
    recovery = {}
    for name, load in outcomes.items():
        after = [status for t, _, status, _ in load if t >= up_at + 2]
        assert after and set(after) == {200}, f"replica {name} did not reconnect"
        recovery[name] = first_200_after(load, up_at) - up_at
        fast = first_200_after(load, fast_up)
        recovery[f"{name} (fast)"] = fast - fast_up
    refused = {rid for _, rid, status, _ in every if status == 503}
    logged_refused = len(refused & set(logged))  # a commit whose answer was lost with the link

    def outage(begin: float, end: float) -> str:
        """503s sent in [begin, end) and the span from the first to the last of them."""
        sent = [t for t, _, status, _ in every if status == 503 and begin <= t < end]
        return f"{len(sent)} × 503 over {max(sent) - min(sent):.2f} s" if sent else "no 503"

    figures = ", ".join(f"{k} {v:.2f} s" for k, v in recovery.items())
    last_503 = {  # the last refusal sent after the server accepted connections again
        name: max((t for t, _, s, _ in every if s == 503 and since <= t < until), default=since)
        - since
        for name, since, until in (("fast", fast_up, down_at), ("immediate", up_at, up_at + 6))
    }
    reasons = Counter(b["error"][:60] for _, _, s, b in every if s == 503 and b)
    print(
        f"\n[postgres restart] two replicas, {len(every)} requests: {statuses[200]} × 200, "
        f"{statuses[503]} × 503 (restart -m fast: {outage(fast_at - 1, down_at)}; "
        f"stop -m immediate, 3 s, start: {outage(down_at, up_at + 6)}, the "
        f"{len(during)} sent while it was stopped all 503; "
        f"{logged_refused} of the 503s were committed — a later retry replays them); "
        f"restart -m fast took {fast_up - fast_at:.2f} s, start after -m immediate "
        f"{up_at - starting_at:.2f} s; first 200 after the server was back: {figures}; "
        f"last 503 after the server was back: "
        f"{', '.join(f'{k} +{v:.2f} s' for k, v in last_503.items())}; "
        f"{len(acknowledged)} acknowledged, all logged once, 0 duplicates; 503 reasons: "
        f"{dict(reasons)}"
    )
