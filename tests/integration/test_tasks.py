"""A regression and a multiclass model on the flights data, end to end in-process: trained by the
default trainer, registered with their task, served (and refused when the recorded task does not
match), logged, measured (score and KPI), and copied as a drill's faulty version."""

from __future__ import annotations

import json

import numpy as np
import pytest

from prodguard import app, wiring
from prodguard.config import KpiSettings, load_settings
from prodguard.errors import PromotionRefused
from prodguard.monitoring.measures import measure
from prodguard.rollout.faults import register_faulty
from prodguard.serving.fast_path import load_verified
from prodguard.serving.prediction_log import SqlitePredictionLog
from prodguard.tasks import Task, spec_from_tags
from prodguard.training.trainer import pip_requirements
from tests.conftest import FLIGHT_REQUEST, copy_project, utc

pytestmark = pytest.mark.integration

CASES = {
    "regression": ("arr_delay", {"mae", "rmse", "r2"}),
    "multiclass": ("delay_class", {"log_loss", "accuracy", "macro_f1"}),
}


@pytest.mark.parametrize("task", sorted(CASES))
def test_train_serve_log_monitor_and_fault(ingested, tmp_path, task) -> None:
    label, metric_names = CASES[task]
    root = copy_project(ingested, tmp_path / "project")
    settings = load_settings(
        root / "prodguard.yaml",
        environ={
            "PRODGUARD_MODEL__TASK": task,
            "PRODGUARD_MODEL__LABEL": label,
            "PRODGUARD_MODEL__EVALUATION_DAYS": "7",
        },
    )
    wiring.feature_store(settings).materialize(until=utc("2013-05-01"))
    trained = app.train(settings, utc("2013-01-01"), utc("2013-01-22"), actor="tests")
    assert metric_names <= set(trained.metrics)
    operations = wiring.registry_operations(settings)
    spec = spec_from_tags(operations.registry.version(trained.version).tags)
    assert spec.task is Task(task)
    if task == "multiclass":
        assert set(spec.classes) == {"early", "on_time", "late"}
    operations.promote("tests", "setup", version=trained.version)

    serving = wiring.build_serving(settings)
    serving.log = SqlitePredictionLog(tmp_path / "predictions.db")
    serving.predictor.answers.log = serving.log
    serving.follower.refresh()
    try:
        requests = [
            serving.request_model(**{**FLIGHT_REQUEST, "request_id": f"r{i}", "distance": d})
            for i, d in enumerate((200.0, 800.0, 1400.0, 2500.0))
        ]
        answers = serving.predictor.predict(
            [r.to_row() for r in requests], [r.request_id for r in requests]
        )
    finally:
        serving.predictor.close()
    for answer in answers:
        logged = serving.log.get(answer.request_id)
        assert logged.prediction == answer.prediction and logged.probability == answer.probability
        if task == "regression":
            assert answer.prediction == {"value": answer.probability}
        else:
            probabilities = answer.prediction["probabilities"]
            assert set(probabilities) == {"early", "on_time", "late"}
            assert sum(probabilities.values()) == pytest.approx(1.0)
            assert answer.prediction["class"] == max(probabilities, key=probabilities.get)
            assert answer.probability == probabilities[answer.prediction["class"]]

    outcomes = [12.0, -3.0, 40.0, 0.0] if task == "regression" else ["late", "early"] * 2
    for answer, outcome in zip(answers, outcomes, strict=True):
        serving.log.record_feedback(answer.request_id, {label: outcome}, utc("2013-05-02"))
    frame = serving.log.window(utc("2000-01-01"), utc("2100-01-01"), role="champion")
    kpi = KpiSettings(name="cost", outcome=label, min_labelled=1)
    found = {
        m.metric: m.value
        for m in measure(
            frame,
            features={},
            scores=None,
            kpi=kpi,
            matured=True,
            errors={},
            min_rows=1,
            spec=spec,
        )
    }
    if task == "regression":
        values = np.array([a.probability for a in answers])
        assert found["score.mean"] == pytest.approx(values.mean())
        assert found["kpi.cost"] == pytest.approx(np.abs(values - outcomes).mean())
    else:
        shares = [found[f"score.share.{c}"] for c in spec.classes]
        assert sum(shares) == pytest.approx(1.0)
        wrong = [a.prediction["class"] != o for a, o in zip(answers, outcomes, strict=True)]
        assert found["kpi.cost"] == pytest.approx(np.mean(wrong))

    contract = operations.registry.version(trained.version).tags["prodguard.store_features"]
    store_features = json.loads(contract)
    base = load_verified(operations.registry, store_features, trained.version)
    faulty = register_faulty(operations, trained.version, 0.5, "tests", pip_requirements())
    shifted = load_verified(operations.registry, store_features, faulty)
    rows = base.frame([base.fallbacks, base.fallbacks])
    if task == "regression":
        assert shifted.raw(rows) == pytest.approx(base.raw(rows) + 0.5)  # no baseline: 1 sd = 1
    else:
        assert (shifted.raw(rows)[:, -1] > base.raw(rows)[:, -1]).all()

    operations.registry.set_version_tag(trained.version, "prodguard.task", "binary")
    with pytest.raises(PromotionRefused, match="cannot be served: model.task is binary"):
        load_verified(operations.registry, store_features, trained.version)
