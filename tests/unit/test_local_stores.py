from datetime import UTC, datetime

import pandas as pd
import pytest

from prodguard.alerts import Alert, Alerter, JsonlSink
from prodguard.errors import StorageError
from prodguard.ingestion.offline import OfflineStore
from prodguard.ingestion.quarantine import Quarantine

pytestmark = pytest.mark.unit


def batch(keys, values) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "k": keys,
            "event_timestamp": pd.to_datetime(["2013-01-01"] * len(keys), utc=True),
            "v": values,
        }
    )


def test_offline_write_is_idempotent_and_newest_wins(tmp_path) -> None:
    store = OfflineStore(tmp_path)
    first = store.write("s", batch(["a", "b"], [1, 2]), keys=["k"], timestamp="event_timestamp")
    assert (first.rows_added, first.rows_replaced, first.rows_total) == (2, 0, 2)
    again = store.write("s", batch(["a", "b"], [1, 2]), keys=["k"], timestamp="event_timestamp")
    assert (again.rows_added, again.rows_replaced, again.rows_total) == (0, 2, 2)
    update = store.write("s", batch(["b", "c"], [20, 3]), keys=["k"], timestamp="event_timestamp")
    assert (update.rows_added, update.rows_replaced, update.rows_total) == (1, 1, 3)
    stored = store.read("s").set_index("k")["v"].to_dict()
    assert stored == {"a": 1, "b": 20, "c": 3}
    assert not list(tmp_path.glob(".s.parquet.*"))  # no temporary files left behind


def test_offline_read_of_corrupt_file(tmp_path) -> None:
    (tmp_path / "s.parquet").write_bytes(b"not parquet")
    with pytest.raises(StorageError, match="unreadable"):
        OfflineStore(tmp_path).read("s")


def test_offline_sample_reads_only_row_groups_spread_over_the_source(tmp_path) -> None:
    store = OfflineStore(tmp_path)
    frame = pd.DataFrame({"k": [f"r{i}" for i in range(10_000)], "v": range(10_000)})
    frame.to_parquet(store.path("s"), index=False, row_group_size=500)  # 20 groups
    sample = store.sample("s", 1200)
    assert 1200 <= len(sample) < 10_000 and list(sample.columns) == ["k", "v"]
    assert sample["v"].min() == 0 and sample["v"].max() == 9999  # first and last groups
    assert (
        sample["v"].is_monotonic_increasing and len(set(sample["v"] // 500)) == len(sample) // 500
    )
    assert store.sample("s", 20_000).equals(store.read("s"))  # fewer rows than asked: all
    assert store.sample("missing", 10) is None
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(StorageError, match="unreadable"):
        store.sample("bad", 10)


def test_quarantine_keeps_batch_reason_and_validation(tmp_path) -> None:
    quarantine = Quarantine(tmp_path)
    frame = batch(["a"], [1])
    placed = quarantine.put("s", "b1", frame, {"source": "s", "batch_id": "b1"}, {"success": False})
    assert (placed.path / "batch.parquet").exists()
    assert (placed.path / "validation.json").exists()
    pd.testing.assert_frame_equal(pd.read_parquet(placed.path / "batch.parquet"), frame)
    again = quarantine.put("s", "b1", frame, {"source": "s", "batch_id": "b1"}, None)
    assert again.path == placed.path
    assert [r["batch_id"] for r in quarantine.list()] == ["b1"]
    assert quarantine.list("other") == []


def _alert() -> Alert:
    return Alert("quarantine", "critical", "s", "m", datetime(2013, 1, 1, tzinfo=UTC), {"n": 1})


def test_alerts_are_appended_durably(tmp_path) -> None:
    sink = JsonlSink(tmp_path / "alerts.jsonl")
    Alerter([sink]).send(_alert())
    Alerter([sink]).send(_alert())
    records = sink.read()
    assert len(records) == 2
    assert records[0]["type"] == "quarantine" and records[0]["time"] == "2013-01-01T00:00:00+00:00"


class _Broken:
    def send(self, alert: Alert) -> None:
        raise OSError("sink down")


def test_one_failing_sink_does_not_silence_the_others(tmp_path) -> None:
    sink = JsonlSink(tmp_path / "alerts.jsonl")
    Alerter([_Broken(), sink]).send(_alert())
    assert len(sink.read()) == 1
    with pytest.raises(StorageError, match="no alert sink accepted"):
        Alerter([_Broken()]).send(_alert())
