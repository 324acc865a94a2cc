"""The batch request path on real requests, a real model and the real online store: the same
online values, model input and logged features as the previous row-by-row assembly."""

import json
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from prodguard import wiring
from prodguard.bench.workload import guarded_bodies
from prodguard.config import load_settings
from prodguard.serving.engine import LastGood, _inputs, columns_of
from prodguard.serving.prediction_log import SqlitePredictionLog
from tests.unit.test_batch_path import old_assemble, old_inspect

pytestmark = pytest.mark.integration

AT = datetime(2013, 5, 1, tzinfo=UTC)  # the store is materialized up to then


@pytest.fixture
def serving(served_project: Path, tmp_path: Path):
    settings = load_settings(
        served_project / "prodguard.yaml",
        environ={"PRODGUARD_PATHS__DATA_DIR": str(served_project / ".prodguard")},
    )
    built = wiring.build_serving(settings)
    built.log = SqlitePredictionLog(tmp_path / "predictions.db")
    built.predictor.answers.log = built.log
    built.follower.refresh()
    champion = built.follower.state.champion
    bodies = guarded_bodies(settings, AT, 300, champion.categories, "b")
    built.rows = [built.request_model.model_validate(body).to_row() for body in bodies]
    built.ids = [body["request_id"] for body in bodies]
    yield built
    built.predictor.close()


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def test_online_reads_of_a_batch_equal_one_by_one(serving) -> None:
    lookup = serving.predictor.features
    entities = [{k: row.get(k) or "" for k in lookup._entity_keys} for row in serving.rows]
    batch = lookup._store.online_records(entities)
    alone = [lookup._store.online_records([entity])[0] for entity in entities[:60]]
    assert len(batch) == len(entities) and len({tuple(e.values()) for e in entities}) < 300
    for found, expected in zip(batch, alone, strict=False):
        assert list(found) == list(expected)
        assert all(same(found[k], expected[k]) for k in found)


def test_model_input_and_log_equal_the_row_by_row_assembly(serving) -> None:
    predictor = serving.predictor
    champion = serving.follower.state.champion
    rows = serving.rows
    checks = predictor.checks
    old_checks = [old_inspect(checks._contract, checks._critical, r, champion) for r in rows]
    assert checks.inspect_all(rows, champion) == old_checks
    assert not any(problems for problems, _ in old_checks)

    fetched, unavailable = predictor.features.fetch(rows)
    now = predictor.features._clock.now()
    old = old_assemble(predictor.features, LastGood(), rows, fetched, unavailable, champion, now)
    request = predictor.derive(pd.DataFrame(rows))
    old_inputs = [{**request.iloc[n].to_dict(), **old[n][0]} for n in range(len(rows))]
    store = predictor.features.assemble_columns(rows, fetched, unavailable, champion)
    assert store.flags == [flags for _, flags, _ in old]
    request = predictor.derive(pd.DataFrame(rows))
    columns, new_inputs = _inputs(columns_of(request), len(request), store, list(range(len(rows))))
    for new, expected in zip(new_inputs, old_inputs, strict=True):
        assert list(new) == list(expected)
        assert all(same(new[k], expected[k]) for k in new), new
    old_frame = champion.frame(old_inputs)  # the model input as it was built
    pd.testing.assert_frame_equal(champion.frame_of(columns, len(rows)), old_frame)
    pd.testing.assert_frame_equal(champion.frame(new_inputs), old_frame)
    np.testing.assert_array_equal(
        champion.raw(champion.frame_of(columns, len(rows))), champion.raw(old_frame)
    )

    answers = predictor.predict_each(rows, serving.ids)  # the whole path, logged
    assert [a.request_id for a in answers] == serving.ids
    for answer, expected, (_, flags) in zip(answers, old_inputs, old_checks, strict=True):
        logged = serving.log.get(answer.request_id)
        written = json.loads(json.dumps(expected, default=str))
        assert logged.features.keys() == written.keys()
        assert all(same(logged.features[k], written[k]) for k in written)
        assert logged.flags == answer.flags and answer.flags[: len(flags)] == flags
    again = predictor.predict_each(rows, serving.ids)  # retried: the logged answers
    assert all(a.replayed for a in again)
    assert [a.probability for a in again] == [a.probability for a in answers]
