"""`prodguard bench`: both services started and stopped by the command, a consistent report.
Figures only: nothing here asserts a time."""

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.conftest import copy_project
from tests.e2e.cli import run

pytestmark = pytest.mark.e2e

REQUESTS = 12
LEVELS = (1, 4, 16)
GUARDED_STAGES = {"features", "checks", "model", "log", "http", "total"}
BARE_STAGES = {"model", "http", "total"}
FLOOR_STAGES = {"http", "total"}


@pytest.fixture(scope="module")
def report(served_project: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = copy_project(served_project, tmp_path_factory.mktemp("bench") / "project")
    run(root, "materialize", "--until", "2013-05-01")
    logged_before = logged(root)
    done = run(
        root,
        "bench",
        "--requests",
        str(REQUESTS),
        "--warmup",
        "3",
        "--concurrency",
        ",".join(map(str, LEVELS)),
        "--json",
    )
    document = json.loads(done.stdout)
    document["_logged"] = (logged_before, logged(root))
    return document


def logged(root: Path) -> int:
    """Predictions in the project's own prediction log."""
    from prodguard.serving.prediction_log import SqlitePredictionLog

    log = SqlitePredictionLog(root / ".prodguard" / "predictions.db")
    try:
        return log.count(datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
    finally:
        log.close()


def ordered(summary: dict) -> bool:
    return summary["p50"] <= summary["p95"] <= summary["p99"] <= summary["max"]


def test_report_is_complete_and_consistent(report: dict) -> None:
    assert set(report) >= {"setup", "guarded", "bare", "floor", "ratios", "ratios_floor", "goals"}
    assert report["setup"]["champion"] == 2 and report["setup"]["levels"] == list(LEVELS)
    for name, stages in (
        ("guarded", GUARDED_STAGES),
        ("bare", BARE_STAGES),
        ("floor", FLOOR_STAGES),
    ):
        service = report[name]
        assert service["cold_start_s"] > 0
        assert service["p50"] <= service["p95"] <= service["p99"]
        assert set(service["levels"]) == {str(c) for c in LEVELS}
        for concurrency, level in service["levels"].items():
            assert level["concurrency"] == int(concurrency)
            assert level["requests"] == REQUESTS and level["errors"] == 0
            assert level["statuses"] == {"200": REQUESTS}
            assert level["throughput"] > 0
            assert level["latency_ms"]["count"] == REQUESTS and ordered(level["latency_ms"])
            assert set(level["stages_ms"]) == stages
            for stage in level["stages_ms"].values():
                assert stage["count"] == REQUESTS and ordered(stage)
        first = service["levels"]["1"]["latency_ms"]
        assert (service["p50"], service["p99"]) == (first["p50"], first["p99"])


def test_ratios_are_guarded_over_bare_as_printed(report: dict) -> None:
    g, b, ratios = report["guarded"], report["bare"], report["ratios"]
    assert ratios["p50"] == pytest.approx(g["p50"] / b["p50"], abs=1e-3)
    assert ratios["p99"] == pytest.approx(g["p99"] / b["p99"], abs=1e-3)
    assert ratios["throughput_c16"] == pytest.approx(
        g["levels"]["16"]["throughput"] / b["levels"]["16"]["throughput"], abs=1e-3
    )
    assert {"p50 ratio", "p99 ratio", "throughput ratio c=16", "guarded cold start s"} <= set(
        report["goals"]
    )
    assert all(isinstance(goal["met"], bool) for goal in report["goals"].values())


def test_the_floor_ratios_and_the_batch_are_reported(report: dict) -> None:
    g, f, ratios = report["guarded"], report["floor"], report["ratios_floor"]
    assert ratios["p50"] == pytest.approx(g["p50"] / f["p50"], abs=1e-3)
    assert ratios["p99"] == pytest.approx(g["p99"] / f["p99"], abs=1e-3)
    assert ratios["throughput_c16"] == pytest.approx(
        g["levels"]["16"]["throughput"] / f["levels"]["16"]["throughput"], abs=1e-3
    )
    batch = report["batch"]
    assert batch["rows"] == report["setup"]["batch_rows"]
    assert batch["latency_ms"]["count"] == batch["server_ms"]["count"] == 3
    assert batch["server_ms"]["p50"] <= batch["latency_ms"]["p50"]
    names = {"p50 / floor", "p99 / floor", "throughput c=16 / floor", "model stage p50 ms"}
    assert names | {f"predict_batch {batch['rows']} rows server p50 ms"} <= set(report["goals"])
    assert all(goal["by"] > 0 for goal in report["goals"].values())
    # each floor ratio in its parts: the guarded request's server stages and HTTP layer
    where = report["goals"]["p50 / floor"]["where"]
    parts = re.fullmatch(
        r"p50 at c=1: guarded ([\d.]+) ms = server ([\d.]+) ms \(checks .*\) \+ HTTP and "
        r"framework ([\d.]+) ms; floor ([\d.]+) ms, all HTTP and framework",
        where,
    )
    assert parts is not None, where
    guarded, server, http, floor = (float(x) for x in parts.groups())
    assert guarded == pytest.approx(g["p50"], abs=0.006) and floor == pytest.approx(
        f["p50"], abs=0.006
    )
    assert 0 < server < guarded and http > 0


def test_bench_traffic_stays_out_of_the_project_log(report: dict) -> None:
    before, after = report["_logged"]
    assert after == before


def test_without_a_champion_it_says_what_to_run(project: Path) -> None:
    done = run(project, "bench", "--requests", "1", expect=2)
    assert "no champion" in done.stderr and "make demo" in done.stderr
