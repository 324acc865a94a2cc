"""The served model's input frame, built column by column, equals the frame pandas builds from
the same rows (what training's ``prepare`` gives the encoder)."""

import numpy as np
import pandas as pd
import pytest

from prodguard.serving.models import LoadedModel
from prodguard.training.model import prepare

pytestmark = pytest.mark.unit

COLUMNS = ("carrier", "origin", "distance", "seats", "temp", "engine")


def reference(model: LoadedModel, rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(model.columns))
    for column in model.columns:
        if column not in model.categorical:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    return prepare(frame)


def test_frame_equals_pandas_frame_for_every_kind_of_value() -> None:
    model = LoadedModel(1, None, COLUMNS, frozenset({"carrier", "origin", "engine"}), {}, {})
    rows = [
        {
            "carrier": "UA",
            "origin": "EWR",
            "distance": 1400,
            "seats": 149,
            "temp": 57.9,
            "engine": "Turbo-fan",
        },
        {
            "carrier": "B6",
            "origin": "JFK",
            "distance": 1400.5,
            "seats": None,
            "temp": float("nan"),
            "engine": None,
        },
        {
            "carrier": "AA",
            "origin": "LGA",
            "distance": np.int64(7),
            "seats": np.float32(2.5),
            "temp": "12.5",
            "engine": float("nan"),
        },
        {
            "carrier": "DL",
            "origin": "EWR",
            "distance": True,
            "seats": "n/a",
            "temp": pd.NA,
            "engine": pd.NA,
        },
    ]
    for chosen in (rows[:1], rows):
        ours, theirs = model.frame(chosen), reference(model, chosen)
        pd.testing.assert_frame_equal(ours, theirs)
        for column in ("carrier", "origin", "engine"):
            assert [v for v in ours[column]] == [v for v in theirs[column]]
