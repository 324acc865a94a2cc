"""A staging period too short for one window names both ways out: a longer period, or the
setting that sizes a window."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from prodguard.errors import NoDataError
from prodguard.monitoring.jobs import baseline_from_log
from tests.conftest import utc


class FewRows:
    def window(self, start: Any, end: Any, role: str) -> pd.DataFrame:
        return pd.DataFrame({"version": [1] * 3, "probability": [0.5] * 3})


def test_too_few_predictions_name_monitoring_window_min_rows(settings: Any) -> None:
    with pytest.raises(NoDataError) as refused:
        baseline_from_log(
            settings, FewRows(), 1, utc("2013-04-01"), utc("2013-05-01"), reference=None
        )  # type: ignore[arg-type]
    message = str(refused.value)
    assert "logged 3 predictions of v1" in message and "\n" not in message
    assert "choose a longer period" in message and "monitoring.window.min_rows" in message
