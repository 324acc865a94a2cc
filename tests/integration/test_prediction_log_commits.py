"""The prediction log's group commit: concurrent writers share commits, each write stays
all-or-nothing, and nothing acknowledged is lost when the writing process is killed."""

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime

import pytest

from prodguard.errors import DuplicateRequest
from prodguard.serving.prediction_log import PredictionRecord, SqlitePredictionLog

pytestmark = pytest.mark.integration

WRITER = """
import sys
from datetime import UTC, datetime
from pathlib import Path
from prodguard.serving.prediction_log import PredictionRecord, SqlitePredictionLog
log = SqlitePredictionLog(Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]) or None)
for i in range(100000):
    log.write([PredictionRecord(f"k-{i}", datetime.now(UTC), "m", 1, "champion", 0.5, True,
                                {"temp": 1.0})])
    print(f"k-{i}", flush=True)  # acknowledged
"""


def record(request_id: str) -> PredictionRecord:
    return PredictionRecord(
        request_id, datetime.now(UTC), "m", 1, "champion", 0.25, False, {"temp": 50.0}
    )


def stored(path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {row[0] for row in conn.execute("SELECT request_id FROM predictions")}


def test_concurrent_writes_all_land_and_a_duplicate_refuses_only_its_own(tmp_path) -> None:
    path = tmp_path / "predictions.db"
    log = SqlitePredictionLog(path)
    log.write([record("dup")])
    refused, seen_after_write = [], []

    def writer(n: int) -> None:
        for i in range(25):
            ids = ["dup", f"w{n}-{i}"] if (n, i) == (3, 7) else [f"w{n}-{i}"]
            try:
                log.write([record(r) for r in ids])
            except DuplicateRequest:
                refused.append(ids)
                continue
            seen_after_write.append(log.get(ids[0]) is not None)  # committed when it returns

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert refused == [["dup", "w3-7"]]  # all-or-nothing: w3-7 was not logged either
    expected = {"dup"} | {f"w{n}-{i}" for n in range(8) for i in range(25)} - {"w3-7"}
    assert stored(path) == expected and all(seen_after_write)
    log.close()


@pytest.mark.parametrize(
    ("synchronous", "checkpoints"), [("FULL", 0.0), ("NORMAL", 0.0), ("NORMAL", 0.05)]
)
def test_acknowledged_writes_survive_kill_9(tmp_path, synchronous, checkpoints) -> None:
    path = tmp_path / "predictions.db"
    out = (tmp_path / "acked.txt").open("w")
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), synchronous, str(checkpoints)],
        stdout=out,
        stderr=out,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if len((tmp_path / "acked.txt").read_text().split()) > 200:
                break
            time.sleep(0.05)
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(timeout=10)
        out.close()
    acked = {line for line in (tmp_path / "acked.txt").read_text().split() if line.startswith("k-")}
    assert len(acked) > 200
    assert acked <= stored(path)


def test_background_checkpoints_keep_the_wal_copied_and_stop_at_close(tmp_path) -> None:
    path = tmp_path / "predictions.db"
    before = set(threading.enumerate())
    log = SqlitePredictionLog(path, "NORMAL", checkpoint_every_s=0.05)
    ours = [t for t in set(threading.enumerate()) - before if t.name == "prodguard-log-checkpoint"]
    assert len(ours) == 1
    log.write([record(f"c-{i}") for i in range(2000)])
    time.sleep(0.5)
    with sqlite3.connect(path) as conn:
        busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert busy == 0 and frames == copied  # nothing left for a request to copy
    log.close()
    ours[0].join(timeout=5)
    assert not ours[0].is_alive()
    assert len(stored(path)) == 2000
