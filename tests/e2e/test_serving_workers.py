"""`prodguard serve` with several BentoML workers (serving.workers): both take requests, every
answer is logged exactly once in the one shared prediction log, and a retried request id is
replayed whichever worker it reaches."""

import shutil
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from prodguard.service_process import descendants
from tests.conftest import FLIGHT_REQUEST, make_project
from tests.e2e.cli import serving
from tests.e2e.test_serving_http import post

pytestmark = pytest.mark.e2e
REQUESTS = 240


def _serve_pid(base: str) -> int:
    """The `prodguard serve` process listening on ``base``'s port (from /proc)."""
    port = base.rsplit(":", 1)[1]
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in argv and port.encode() in argv and b"--port" in argv:
            return int(entry.name)
    raise AssertionError(f"no serve process on port {port}")


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def test_two_workers_share_the_load_and_log_every_answer_once(
    served_project: Path, tmp_path: Path
) -> None:
    project = make_project(tmp_path / "project")
    shutil.copytree(served_project / ".prodguard", project / ".prodguard")
    ids = [f"workers-{i}" for i in range(REQUESTS)]
    with serving(project, {"PRODGUARD_SERVING__WORKERS": "2"}) as base:
        workers = [
            pid
            for pid in descendants(_serve_pid(base))
            if b"_bentoml_impl.worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        assert len(workers) == 2, workers
        before = {pid: _cpu_ticks(pid) for pid in workers}
        with ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(
                    lambda rid: post(base, "/predict", {**FLIGHT_REQUEST, "request_id": rid}), ids
                )
            )
            retried = list(
                pool.map(
                    lambda rid: post(base, "/predict", {**FLIGHT_REQUEST, "request_id": rid}),
                    ids[:60],
                )
            )
        spent = {pid: _cpu_ticks(pid) - before[pid] for pid in workers}
    assert all(code == 200 for code, _ in answers), [b for c, b in answers if c != 200][:3]
    assert all(code == 200 and body["replayed"] for code, body in retried), retried[:3]
    first = {body["request_id"]: body["probability"] for _, body in answers}
    assert all(first[body["request_id"]] == body["probability"] for _, body in retried)
    # both workers answered a real share (CPU time each spent serving, in clock ticks)
    assert min(spent.values()) >= 0.1 * sum(spent.values()), spent
    with sqlite3.connect(project / ".prodguard" / "predictions.db") as conn:
        rows = conn.execute(
            "SELECT request_id, COUNT(*) FROM predictions WHERE role = 'champion' "
            "AND request_id LIKE 'workers-%' GROUP BY request_id"
        ).fetchall()
    assert len(rows) == REQUESTS and {n for _, n in rows} == {1}
