from datetime import UTC, datetime

import pytest

from prodguard.errors import InputError
from prodguard.timewindows import parse_time, split_window

pytestmark = pytest.mark.unit


def test_parse_time_defaults_to_utc() -> None:
    assert parse_time("2013-05-01") == datetime(2013, 5, 1, tzinfo=UTC)
    assert parse_time("2013-05-01T02:00+02:00") == datetime(2013, 5, 1, tzinfo=UTC)


@pytest.mark.parametrize("text", ["yesterday", "2013-13-01", ""])
def test_parse_time_rejects(text: str) -> None:
    with pytest.raises(InputError, match="ISO date"):
        parse_time(text, "--start")


def test_split_by_month_keeps_partial_edges() -> None:
    start, end = datetime(2013, 1, 15, tzinfo=UTC), datetime(2013, 3, 2, tzinfo=UTC)
    assert split_window(start, end, "month") == [
        (start, datetime(2013, 2, 1, tzinfo=UTC)),
        (datetime(2013, 2, 1, tzinfo=UTC), datetime(2013, 3, 1, tzinfo=UTC)),
        (datetime(2013, 3, 1, tzinfo=UTC), end),
    ]


def test_split_day_and_window() -> None:
    start, end = datetime(2013, 1, 1, tzinfo=UTC), datetime(2013, 1, 3, tzinfo=UTC)
    assert len(split_window(start, end, "day")) == 2
    assert split_window(start, end, "window") == [(start, end)]
