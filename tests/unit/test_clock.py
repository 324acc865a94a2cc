"""Simulated time shared through a file (``clock.file``)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from prodguard.clock import FileClock, SystemClock
from prodguard.errors import ConfigError
from tests.conftest import utc

pytestmark = pytest.mark.unit


def test_a_second_reader_sees_every_move(tmp_path: Path) -> None:
    writer, reader = FileClock(tmp_path / "now"), FileClock(tmp_path / "now")
    writer.set(utc("2013-05-01T06:00"))
    assert reader.now() == utc("2013-05-01T06:00")
    writer.set(utc("2013-05-01T07:00"))  # replaced: the reader re-parses
    assert reader.now() == utc("2013-05-01T07:00")
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.parametrize(
    ("text", "problem"),
    [(None, "cannot be read"), ("yesterday", "ISO 8601"), ("2013-05-01T06:00", "timezone")],
)
def test_an_unreadable_clock_says_how_to_fix_it(tmp_path: Path, text: str | None, problem: str):
    path = tmp_path / "now"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=problem):
        FileClock(path).now()


def test_naive_times_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="timezone"):
        FileClock(tmp_path / "now").set(datetime(2013, 5, 1))


def test_settings_choose_the_clock(settings, tmp_path: Path) -> None:
    from prodguard import wiring
    from prodguard.config import load_settings

    assert isinstance(wiring.clock_for(settings), SystemClock)
    simulated = load_settings(settings.config_path, environ={"PRODGUARD_CLOCK__FILE": "state/now"})
    clock = wiring.clock_for(simulated)
    assert isinstance(clock, FileClock)
    assert clock.path == settings.config_path.parent / "state" / "now"
