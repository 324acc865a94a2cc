"""Monitors at their limits: an oversized window is sampled in SQL with bounded memory; a
monitor that cannot judge reports "inconclusive" with a reason and alerts, never "ok".

The large log is written once per module through the log's own write API (big batches) on a real
SQLite prediction log; memory is the peak of Python allocations (tracemalloc: pandas and numpy
buffers included) while one window is judged.
"""

from __future__ import annotations

import json
import time
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from prodguard.clock import FixedClock
from prodguard.config import MonitoringSettings, WindowSettings
from prodguard.errors import RegistryError, StorageError
from prodguard.monitoring.baseline import Baseline, MetricBaseline
from prodguard.monitoring.measures import feature_references
from prodguard.monitoring.monitor import Monitor, VersionReference
from prodguard.serving.prediction_log import PredictionRecord, SqlitePredictionLog

pytestmark = pytest.mark.reliability

T0 = datetime(2013, 6, 1, tzinfo=UTC)
DAYS = 5
PER_DAY = 100_000  # the 1-day window: 100k predictions; the 5-day window: 500k
MAX_ROWS = 20_000
NUMERIC = [f"x{i}" for i in range(6)]
STATS = {
    **{
        n: {
            "kind": "numeric",
            "bin_edges": [-1.0, 0.0, 1.0],
            "bin_fractions": [0.16, 0.34, 0.34, 0.16],
        }
        for n in NUMERIC
    },
    "c": {"kind": "categorical", "categories": {"a": 0.5, "b": 0.5}},
}
LATENCIES = {"checks_ms": 1.0, "features_ms": 1.0, "model_ms": 2.0, "batch_rows": 1}


def staging_baseline(days: float = 1) -> Baseline:
    return Baseline(
        model_version=1,
        start="s",
        end="e",
        window={"minutes": days * 1440, "rows": None},
        metrics={"score.mean": MetricBaseline(0.3, 0.01, 20, 0.01)},
        score_edges=[0.25, 0.3, 0.35],
        score_fractions=[0.16, 0.34, 0.34, 0.16],
        rows=1000,
        created="now",
    )


def reference(version: int = 1, days: float = 1) -> VersionReference:
    return VersionReference(feature_references(STATS), staging_baseline(days))


def settings(minutes: float, max_rows: int) -> MonitoringSettings:
    window = WindowSettings(minutes=minutes, step_minutes=None, min_rows=200, max_rows=max_rows)
    return MonitoringSettings(window=window)


def batch(start: int, size: int, per_day: int, rng: np.random.Generator, nan: bool = False):
    values = np.full((size, len(NUMERIC)), np.nan) if nan else rng.normal(size=(size, 6))
    step = 86_400 / per_day
    return [
        PredictionRecord(
            request_id=f"r{start + i}",
            time=T0 + timedelta(seconds=(start + i) * step),
            model="m",
            version=1,
            role="champion",
            probability=float(0.3 + 0.05 * values[i, 0]) if not nan else 0.3,
            decision=False,
            features={**dict(zip(NUMERIC, values[i].tolist(), strict=True)), "c": "ab"[i % 2]},
            latencies_ms=LATENCIES,
        )
        for i in range(size)
    ]


class CountingLog:
    """The real log; records how many rows each window read returned (the SQL read's size)."""

    def __init__(self, log: SqlitePredictionLog) -> None:
        self._log = log
        self.reads: list[int] = []

    def window(self, *args, **kwargs) -> pd.DataFrame:
        frame = self._log.window(*args, **kwargs)
        self.reads.append(len(frame))
        return frame

    def __getattr__(self, name: str):
        return getattr(self._log, name)


@pytest.fixture(scope="module")
def big_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqlitePredictionLog]:
    path = tmp_path_factory.mktemp("big") / "predictions.db"
    log = SqlitePredictionLog(path, "NORMAL")
    rng = np.random.default_rng(7)
    began = time.perf_counter()
    total, size = DAYS * PER_DAY, 25_000
    for start in range(0, total, size):
        log.write(batch(start, size, PER_DAY, rng))
    seconds = time.perf_counter() - began
    print(
        f"\nwrote {total} predictions in {seconds:.1f} s ({total / seconds:.0f}/s, batches of "
        f"{size}); log {path.stat().st_size / 1e6:.0f} MB"
    )
    yield log
    log.close()


def judged(log: SqlitePredictionLog, days: int, max_rows: int):
    """Judge one window of ``days``; (report, rows per SQL read, peak MB, seconds)."""
    counting = CountingLog(log)
    references = lambda version: reference(version, days)  # noqa: E731
    monitor = Monitor(counting, references, settings(days * 1440, max_rows), FixedClock(T0))
    tracemalloc.start()
    began = time.perf_counter()
    (report,) = monitor.over(T0, T0 + timedelta(days=days))
    seconds = time.perf_counter() - began
    peak = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    return report, counting.reads, peak, seconds


def test_oversized_windows_are_sampled_in_sql_with_bounded_memory(big_log) -> None:
    small, small_reads, small_peak, small_s = judged(big_log, 1, MAX_ROWS)
    large, large_reads, large_peak, large_s = judged(big_log, DAYS, MAX_ROWS)
    full, full_reads, full_peak, full_s = judged(big_log, 1, 10_000_000)
    for name, report, reads, peak, seconds in (
        ("100k window, max_rows 20k", small, small_reads, small_peak, small_s),
        ("500k window, max_rows 20k", large, large_reads, large_peak, large_s),
        ("100k window, unsampled", full, full_reads, full_peak, full_s),
    ):
        print(
            f"{name}: {report.rows} predictions counted, every {report.sampled_every}th judged "
            f"({max(reads)} rows read), status {report.status}, peak {peak:.0f} MB, "
            f"{seconds:.1f} s"
        )
    assert (small.sampled_every, large.sampled_every, full.sampled_every) == (5, 25, 1)
    assert max(small_reads) <= MAX_ROWS and max(large_reads) <= MAX_ROWS  # read in SQL
    assert max(full_reads) == PER_DAY
    assert small.rows == PER_DAY and large.rows == DAYS * PER_DAY  # scaled back up
    assert small.status == large.status == full.status == "ok"
    # bounded by max_rows, not by the window: 5x the window, about the same peak...
    assert large_peak < 1.5 * small_peak
    # ...and far below reading the whole (smaller) window
    assert full_peak > 3 * small_peak


def test_a_backfill_reads_one_window_at_a_time(big_log) -> None:
    """Five daily windows over the 500k range: never more than max_rows rows in one read."""
    counting = CountingLog(big_log)
    monitor = Monitor(counting, reference, settings(1440, MAX_ROWS), FixedClock(T0))
    reports = monitor.over(T0, T0 + timedelta(days=DAYS))
    assert [r.rows for r in reports] == [PER_DAY] * DAYS
    assert {r.sampled_every for r in reports} == {5}
    assert max(counting.reads) <= MAX_ROWS


def test_the_guards_judgement_is_sampled_too(big_log) -> None:
    counting = CountingLog(big_log)
    monitor = Monitor(counting, reference, settings(1440, MAX_ROWS), FixedClock(T0))
    report = monitor.judge(T0, T0 + timedelta(days=2), 1, matured=False, min_rows=200)
    assert report.sampled_every == 10 and report.rows == 2 * PER_DAY
    assert max(counting.reads) <= MAX_ROWS


# ---- a monitor that cannot judge: inconclusive, with a reason and an alert -------------------


@pytest.fixture
def log(tmp_path: Path) -> Iterator[SqlitePredictionLog]:
    found = SqlitePredictionLog(tmp_path / "predictions.db", "NORMAL")
    found.write(batch(0, 1000, 1000, np.random.default_rng(1)))  # one day, 1000 predictions
    yield found
    found.close()


def one_window(log, references) -> list:
    return Monitor(log, references, settings(1440, 1000), FixedClock(T0)).over(
        T0, T0 + timedelta(days=1)
    )


def assert_inconclusive(reports, reason: str) -> None:
    from prodguard.monitoring.alerting import alerts_of

    (report,) = reports
    assert report.status == "inconclusive" and reason in report.reason, report
    raised, _ = alerts_of(reports, T0)
    assert [a.type for _, a in raised] == ["monitor_inconclusive"]
    assert reason in raised[0][1].message


class FileRegistry:
    """The registry calls version_reference makes, on JSON files (a missing file: the
    RegistryError the MLflow adapter raises for a missing artifact)."""

    def __init__(self, folder: Path, tags: dict[str, str]) -> None:
        self.folder, self.tags = folder, tags

    def load_json_artifact(self, version: int, name: str):
        path = self.folder / name
        if not path.is_file():
            raise RegistryError(f"v{version} has no artifact {name}")
        return json.loads(path.read_text())

    def version(self, version: int):
        return type("Version", (), {"tags": self.tags})()


def file_references(folder: Path, tags: dict[str, str]):
    from prodguard.monitoring.jobs import version_reference

    registry = FileRegistry(folder, tags)
    return lambda version: version_reference(registry, version)


def test_unreadable_training_reference(log, tmp_path: Path) -> None:
    from prodguard.registry.lineage import REFERENCE_STATS_JSON as REFERENCE_ARTIFACT

    (tmp_path / REFERENCE_ARTIFACT).write_text("{not json")
    with pytest.raises(json.JSONDecodeError):  # what the file gives...
        file_references(tmp_path, {})(1)
    # ...is a failed monitor, not a quiet one
    assert_inconclusive(one_window(log, file_references(tmp_path, {})), "monitor failed")


def test_baseline_recorded_but_missing(log, tmp_path: Path) -> None:
    from prodguard.registry.lineage import BASELINE as BASELINE_TAG
    from prodguard.registry.lineage import REFERENCE_STATS_JSON as REFERENCE_ARTIFACT

    (tmp_path / REFERENCE_ARTIFACT).write_text(json.dumps(STATS))
    references = file_references(tmp_path, {BASELINE_TAG: "2013-04-01"})
    assert_inconclusive(one_window(log, references), "references of v1 unreadable")


def test_no_baseline_is_never_an_ok_for_what_needs_one(log, tmp_path: Path) -> None:
    """Without a staging baseline the features are still judged against training; the score,
    KPI and latency say "no_baseline", never "ok"."""
    from prodguard.registry.lineage import REFERENCE_STATS_JSON as REFERENCE_ARTIFACT

    (tmp_path / REFERENCE_ARTIFACT).write_text(json.dumps(STATS))
    (report,) = one_window(log, file_references(tmp_path, {}))
    assert report.finding("psi.x0").status == "ok"
    assert report.finding("score.mean").status == "no_baseline"
    assert report.finding("score.psi").status == "inconclusive"
    assert report.status == "inconclusive" and "score.psi" in report.reason


def test_features_logged_as_nulls_only(tmp_path: Path) -> None:
    log = SqlitePredictionLog(tmp_path / "predictions.db", "NORMAL")
    log.write(batch(0, 1000, 1000, np.random.default_rng(1), nan=True))
    references = lambda version: reference(version)  # noqa: E731
    reports = one_window(log, references)
    assert_inconclusive(reports, "psi.x0 (all null)")
    assert reports[0].finding("psi.c").status == "ok"  # the one feature that was logged
    log.close()


class BrokenLog:
    """A prediction log whose reads fail (a locked or corrupt file, a lost database)."""

    def __getattr__(self, name: str):
        def fail(*args, **kwargs):
            raise StorageError("prediction log read failed: database disk image is malformed")

        return fail


def test_a_log_that_fails_on_read_is_alerted_as_inconclusive(
    settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the monitor job: in a loop every pass reports inconclusive and alerts (once,
    de-duplicated); a single pass alerts and fails with the error."""
    from prodguard import app
    from prodguard.monitoring import jobs

    monitor = Monitor(BrokenLog(), reference, settings.monitoring, FixedClock(T0))  # type: ignore[arg-type]
    monkeypatch.setattr(jobs, "build_monitor", lambda s: monitor)
    runs: list = []
    jobs.watch(settings, runs.append, every=1, runs=2, sleep=lambda s: None)
    assert [r.reports[0].status for r in runs] == ["inconclusive", "inconclusive"]
    assert "database disk image is malformed" in runs[0].reports[0].reason
    alerts = app.alerts(settings, "monitor_inconclusive")
    assert len(alerts) == 1 and "malformed" in alerts[0]["message"]

    with pytest.raises(StorageError, match="malformed"):
        jobs.watch(settings, runs.append, every=None)
