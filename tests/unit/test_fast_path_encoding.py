"""The fast path's categorical lookup maps a missing value as the fitted encoder does: with
infrequent categories, a rare missing value lands in the infrequent bin, not NaN."""

import numpy as np
import pandas as pd
import pytest

from prodguard.serving.models import LoadedModel
from prodguard.serving.treelite_adapter import PARITY, compile_model
from prodguard.tasks import ModelScorer, Task
from prodguard.training.model import build_pipeline, prepare

pytestmark = pytest.mark.unit


def test_a_rare_missing_category_scores_as_the_encoder_maps_it() -> None:
    rng = np.random.default_rng(4)
    n = 400
    maker = rng.choice(["A", "B", "C", "D", "E", "F"], n, p=[0.4, 0.3, 0.2, 0.05, 0.03, 0.02])
    maker = pd.Series(maker, dtype=object)
    maker[rng.random(n) < 0.01] = None
    x = pd.DataFrame({"maker": maker.astype("string"), "size": rng.normal(size=n)})
    y = ((x["maker"].isin(["D", "E", "F"]) | x["maker"].isna()) ^ (x["size"] > 1)).astype(int)
    pipeline = build_pipeline(x, seed=1)
    pipeline.set_params(encode__categorical__max_categories=3, model__max_iter=15)
    pipeline.fit(prepare(x), y)
    model = LoadedModel(1, pipeline, ("maker", "size"), frozenset({"maker"}), {}, {})
    rows = [{"maker": m, "size": s} for m in ("A", "E", None, "unseen") for s in (0.0, 2.0)]
    frame = model.frame(rows)
    expected = ModelScorer(pipeline, Task.BINARY).raw(frame)
    scorer = compile_model(pipeline, model.columns, frame, expected)
    assert np.max(np.abs(scorer.raw(frame) - expected)) <= PARITY
