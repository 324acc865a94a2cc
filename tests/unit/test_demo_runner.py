"""The demo starts from a clean data folder, but only deletes what a demo made."""

from __future__ import annotations

from pathlib import Path

import pytest

from prodguard.demo.runner import prepare_data_dir
from prodguard.errors import InputError

pytestmark = pytest.mark.unit


def test_a_previous_demo_is_replaced(tmp_path: Path) -> None:
    data = tmp_path / ".prodguard"
    (data / "demo").mkdir(parents=True)
    (data / "demo" / "events.json").write_text("[]")
    (data / "predictions.db").write_text("old")
    prepare_data_dir(data)
    assert not data.exists()


def test_state_the_demo_did_not_make_is_kept(tmp_path: Path) -> None:
    data = tmp_path / ".prodguard"
    data.mkdir()
    (data / "predictions.db").write_text("production")
    with pytest.raises(InputError, match="did not create"):
        prepare_data_dir(data)
    assert (data / "predictions.db").read_text() == "production"


def test_an_empty_or_missing_folder_is_fine(tmp_path: Path) -> None:
    prepare_data_dir(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    prepare_data_dir(tmp_path / "empty")


def test_the_event_log_marks_the_folder_before_the_first_event(tmp_path: Path) -> None:
    """A demo that fails early leaves a folder the next run may clear."""
    from prodguard.demo.events import EventLog

    data = tmp_path / ".prodguard"
    (data / "demo").mkdir(parents=True)
    EventLog(data / "demo" / "events.json", data / "alerts.jsonl", operations=None)  # type: ignore[arg-type]
    (data / "predictions.db").write_text("half a run")
    prepare_data_dir(data)
    assert not data.exists()
