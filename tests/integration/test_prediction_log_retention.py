"""Retention of the prediction log on both backends (SQLite, and the machine's real PostgreSQL in
a database of the test's own): old days go — exported to parquet first when asked, readable
back — and nothing younger than the cutoff, nor what monitors still read; PostgreSQL's daily
partitions are created on demand and ahead, and rows of the default partition move into theirs.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from prodguard import wiring
from prodguard.errors import ConfigError, StorageError
from prodguard.monitoring.aggregates import Key, Summary
from prodguard.serving.log_retention import cutoff, prune, read_export
from prodguard.serving.prediction_log import PostgresPredictionLog, SqlitePredictionLog
from tests.conftest import utc
from tests.integration.test_prediction_log_backends import T0, open_log, record  # noqa: F401

pytestmark = pytest.mark.integration
DAY0 = utc("2013-05-01")
HOURS_PER_ROW = 6  # 4 predictions a day from DAY0, at 0, 6, 12 and 18 h


def days_of_traffic(log, days: int) -> None:
    """4 champion predictions a day (shadow rows beside the even ones), feedback on each, and a
    request error a day."""
    rows = days * 24 // HOURS_PER_ROW
    log.write([record(i, time=DAY0 + timedelta(hours=HOURS_PER_ROW * i)) for i in range(rows)])
    log.write(
        [
            record(i, role="shadow", version=1, time=DAY0 + timedelta(hours=HOURS_PER_ROW * i))
            for i in range(0, rows, 2)
        ]
    )
    for i in range(rows):
        log.record_feedback(f"r{i}", {"delayed": i % 2}, DAY0 + timedelta(days=days + 1))
    for day in range(days):
        log.record_error(DAY0 + timedelta(days=day), "failed", 2)


EVERYTHING = (utc("2000-01-01"), utc("2100-01-01"))


def test_prune_drops_whole_old_days_with_their_feedback_and_errors(open_log) -> None:  # noqa: F811
    log = open_log()
    days_of_traffic(log, 5)  # 2013-05-01 .. 2013-05-05
    result = prune(log, "2013-05-03")
    assert result.before == "2013-05-03" and result.exported == []
    left = log.window(*EVERYTHING)
    assert left["time"].min() >= "2013-05-03" and len(left) == 18  # 3 days x (4 + 2) kept
    assert result.dropped == 12 and result.errors_dropped == 2
    assert log.errors(*EVERYTHING)["failed"] == 3
    assert log.get("r7") is None and log.answer("r0") is None  # r7: 2013-05-02 18:00
    assert log.get("r8") is not None  # 2013-05-03 00:00: the cutoff day is kept
    assert left.set_index("request_id")["outcome"].notna().all()  # their feedback stays
    # feedback of the dropped predictions went with them: a new prediction has none
    log.write([record(0, time=DAY0 + timedelta(days=10))])
    assert log.window(DAY0 + timedelta(days=9), DAY0 + timedelta(days=11)).loc[0, "outcome"] is None
    assert prune(log, "2013-05-03").dropped == 0  # nothing older is left


def test_export_round_trip_then_drop(open_log, tmp_path: Path) -> None:  # noqa: F811
    log = open_log()
    days_of_traffic(log, 4)
    before = log.window(DAY0, utc("2013-05-03"))
    result = prune(log, "2013-05-03", export=tmp_path / "export")
    assert len(result.exported) == 2 and result.dropped == len(before) == 12
    assert all(path.exists() for path in result.exported)
    ties = ["time", "role"]  # a window orders by time only
    back = read_export(tmp_path / "export").sort_values(ties).reset_index(drop=True)
    before = before.sort_values(ties).reset_index(drop=True)
    columns = [c for c in before.columns if c != "feedback_time"]
    pd.testing.assert_frame_equal(back[columns], before[columns], check_dtype=False)
    assert back["feedback_time"].tolist() == [str(t) for t in before["feedback_time"]]
    assert back.loc[0, "features"] == {"temp": 50.0, "carrier": "UA"}
    one_day = read_export(tmp_path / "export", utc("2013-05-02"), utc("2013-05-03"))
    assert len(one_day) == 6 and one_day["time"].str.startswith("2013-05-02").all()
    assert log.count(*EVERYTHING) == 12  # the two younger days


def test_a_crash_between_export_and_drop_loses_nothing(open_log, tmp_path: Path) -> None:  # noqa: F811
    """The export is written, the drop never happens (killed): the rows are still in the log,
    and the next prune writes the same file again, then drops."""
    log = open_log()
    days_of_traffic(log, 3)
    from prodguard.serving.log_retention import export_part

    first = log.expired("2013-05-02")[0]
    path, rows = export_part(log, first, tmp_path / "export")
    assert rows == 6 and path is not None and log.count(*EVERYTHING) == 18  # "crash" here
    again = prune(log, "2013-05-02", export=tmp_path / "export")
    assert again.exported == [path] and again.dropped == 6
    assert len(list((tmp_path / "export").glob("*.parquet"))) == 1
    assert len(read_export(tmp_path / "export")) == 6


def test_a_row_arriving_after_the_export_stops_the_drop(open_log, tmp_path: Path) -> None:  # noqa: F811
    log = open_log()
    days_of_traffic(log, 2)
    from prodguard.serving.log_retention import export_part

    part = log.expired("2013-05-02")[0]
    _, rows = export_part(log, part, tmp_path / "export")
    log.write([record(99, time=DAY0 + timedelta(hours=1))])  # late, into the exported day
    with pytest.raises(StorageError, match="arrived .* after its export"):
        log.drop(part, rows)
    assert log.get("r99") is not None and log.get("r0") is not None


def test_the_cutoff_keeps_the_retention_and_what_monitors_still_read() -> None:
    now = utc("2013-05-20 12:00")
    assert cutoff(now, 30, timedelta(hours=24)) == "2013-04-20"  # retention decides
    assert cutoff(now, 1, timedelta(hours=24)) == "2013-05-19"  # maturity decides
    week_and_maturity = timedelta(days=7, hours=24)
    assert cutoff(now, 1, week_and_maturity) == "2013-05-12"  # window + maturity decide


def test_prune_log_use_case_keeps_unmatured_rows(project: Path, tmp_path: Path) -> None:
    """``prodguard log prune``'s use case on the project's settings (7-day windows, 24 h KPI
    maturity) with a 1-day retention: only what is older than 8 days goes."""
    from prodguard.app import prune_log
    from prodguard.config import load_settings

    now = tmp_path / "now.txt"
    now.write_text("2013-05-20T12:00:00+00:00")
    settings = load_settings(
        project / "prodguard.yaml",
        environ={
            "PRODGUARD_CLOCK__FILE": str(now),
            "PRODGUARD_STORAGE__LOG_RETENTION_DAYS": "1",
            "PRODGUARD_MONITORING__AGGREGATES__ENABLED": "true",
        },
    )
    assert settings.monitoring.window.minutes == 10080 and settings.monitoring.kpi.maturity_hours
    log = SqlitePredictionLog(settings.paths.prediction_log, "NORMAL")
    store = wiring.aggregate_store(settings)
    assert store is not None
    try:
        days_of_traffic(log, 19)  # 2013-05-01 .. 2013-05-19
        # the window aggregates of a replica that ran from May 1 to 19
        old, kept = Key(utc("2013-05-05"), 1, "champion"), Key(utc("2013-05-15"), 1, "champion")
        store.add({old: Summary(rows=4), kept: Summary(rows=4)})
        store.cover("replica", utc("2013-05-01"), utc("2013-05-19"), closed=False)
        result = prune_log(settings, tmp_path / "export")
        assert result.before == "2013-05-12"
        assert log.window(*EVERYTHING)["time"].min() >= "2013-05-12"
        assert len(read_export(tmp_path / "export")) == result.dropped == 11 * 4 + 22
        assert result.aggregates_dropped == 1  # the summaries of the days that went
        assert set(store.read(utc("2013-05-01"), utc("2013-05-20"))) == {kept}
        # the open interval starts at the cutoff now: the days before it are no longer covered
        assert store.span(utc("2013-05-12"), utc("2013-05-19")) == (
            utc("2013-05-12"),
            utc("2013-05-19"),
        )
        assert store.span(utc("2013-05-10"), utc("2013-05-19")) == (utc("2013-05-10"),) * 2
    finally:
        store.close()
        log.close()
    unset = load_settings(project / "prodguard.yaml", environ={})
    with pytest.raises(ConfigError, match="log_retention_days is not set"):
        prune_log(unset)


# -- PostgreSQL: partitions -------------------------------------------------------------------


def partitions(url: str) -> list[str]:
    import psycopg

    with psycopg.connect(url.replace("+psycopg", "")) as conn:
        return [
            name
            for (name,) in conn.execute(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = 'predictions'::regclass ORDER BY 1"
            )
        ]


@pytest.mark.postgres
def test_partitions_are_made_per_day_and_ahead(pg_database) -> None:
    import psycopg

    url = pg_database("parts")
    log = PostgresPredictionLog(url)
    try:
        assert partitions(url) == ["predictions_default"]
        log.write([record(0), record(1, time=T0 + timedelta(days=2))])
        assert partitions(url) == [
            "predictions_20130501",
            "predictions_20130502",  # ahead of 05-01
            "predictions_20130503",
            "predictions_20130504",  # ahead of 05-03
            "predictions_default",
        ]
        # a row of a day without a partition (another writer's creation gave up) lands in the
        # default partition; maintenance moves it into a partition of its own
        with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
            conn.execute(
                "INSERT INTO predictions (request_id, role, time, model, version, probability, "
                "decision, features, flags, latencies_ms, request) VALUES ('late', 'champion', "
                "'2013-06-01T00:00:00+00:00', 'm', 2, 0.5, 1, '{}', '[]', '{}', '{}')"
            )
            assert conn.execute("SELECT COUNT(*) FROM predictions_default").fetchone()[0] == 1
            log.maintain()
            assert conn.execute("SELECT COUNT(*) FROM predictions_default").fetchone()[0] == 0
            assert conn.execute("SELECT COUNT(*) FROM predictions_20130601").fetchone()[0] == 1
        assert log.count(*EVERYTHING) == 3
        replica = PostgresPredictionLog(url)  # another replica finds them all
        replica.write([record(5, time=T0 + timedelta(days=2, hours=1))])
        replica.close()
        assert len(partitions(url)) == 6  # the replica made none of its own
        dropped = prune(log, "2013-05-03")
        assert dropped.dropped == 1 and "predictions_20130501" not in partitions(url)
        assert "predictions_20130503" in partitions(url)
    finally:
        log.close()


@pytest.mark.postgres
def test_a_legacy_table_becomes_a_partition_and_retention_drops_it(pg_database, caplog) -> None:
    import psycopg

    from tests.integration.test_prediction_log_backends import (
        OLD_INSERT,
        OLD_ROW,
        PREVIOUS_RELEASE,
    )

    url = pg_database("legacy")
    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute(PREVIOUS_RELEASE.format(serial="id BIGSERIAL,", real="DOUBLE PRECISION"))
        conn.execute(OLD_INSERT.format(", ".join(["%s"] * 11)), OLD_ROW)
    log = PostgresPredictionLog(url)
    try:
        assert partitions(url) == ["predictions_default", "predictions_legacy"]
        said = [r.getMessage() for r in caplog.records if "predictions_legacy" in r.getMessage()]
        assert len(said) == 1 and "(1 rows) is now the partition" in said[0]
        PostgresPredictionLog(url).close()  # the next open finds it partitioned: no message
        assert len([r for r in caplog.records if "predictions_legacy" in r.getMessage()]) == 1
        from prodguard.errors import DuplicateRequest

        with pytest.raises(DuplicateRequest):  # its ids keep the log exactly-once
            log.write([record(0)])
        log.write([record(1, time=T0 + timedelta(days=3))])
        assert log.get("r0") is not None and log.count(*EVERYTHING) == 2
        assert prune(log, "2013-05-03").dropped == 1
        assert partitions(url) == [
            "predictions_20130504",
            "predictions_20130505",
            "predictions_default",
        ]
        log.write([record(2, time=T0 + timedelta(days=10))])  # the old ids' sequence goes on
        assert log.count(*EVERYTHING) == 2
    finally:
        log.close()


def test_pages_cover_a_day_once_in_time_order_across_ties(open_log) -> None:  # noqa: F811
    """Export reads a day in keyset pages: rows sharing a time (a champion and its shadow) are
    split between pages without loss or repeat."""
    log = open_log()
    days_of_traffic(log, 1)  # 4 champions + 2 shadows at the champions' times
    part = log.expired("2013-05-02")[0]
    pages = list(log.pages(part, size=2))
    assert [len(rows) for _, rows in pages] == [2, 2, 2]
    keys = [(row[0], row[1]) for _, rows in pages for row in rows]
    assert len(set(keys)) == 6 and [row[2] for _, rows in pages for row in rows] == sorted(
        row[2] for _, rows in pages for row in rows
    )
