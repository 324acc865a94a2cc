"""The fast path stored with the version: ``prodguard train`` (binary, multiclass, regression) and
``prodguard adopt`` record the compiled artifact, its digest and its parity on the evaluation
rows; serving loads that artifact and scores the evaluation rows as the model does (within
1e-6); a tampered artifact is not used and the model scores itself, with the reason."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from prodguard import app, wiring
from prodguard.adoption import adopt_model
from prodguard.config import load_settings
from prodguard.registry import lineage as names
from prodguard.registry.adoption import AdoptWindows
from prodguard.registry.config import load_registry_config
from prodguard.serving.fast_path import load_verified
from prodguard.serving.models import LoadedModel
from prodguard.serving.treelite_adapter import PARITY, TreeliteScorer
from prodguard.tasks import ModelScorer
from prodguard.training.dataset import build_frame
from prodguard.training.model import prepare, train_default
from tests.conftest import copy_project, utc

pytestmark = pytest.mark.integration

LABELS = {"multiclass": "delay_class", "regression": "arr_delay"}
TRAIN = (utc("2013-01-01"), utc("2013-01-22"))
EVAL = (utc("2013-01-22"), utc("2013-01-29"))


def task_settings(root: Path, task: str):
    env = {"PRODGUARD_MODEL__EVALUATION_DAYS": "7", "PRODGUARD_MODEL__TASK": task}
    if task != "binary":
        env["PRODGUARD_MODEL__LABEL"] = LABELS[task]
    return load_settings(root / "prodguard.yaml", environ=env)


@pytest.fixture(scope="module")
def project(ingested, tmp_path_factory) -> dict:
    """One registry: v1 binary, v2 multiclass, v3 regression trained; v4 a binary model
    trained outside prodguard and adopted."""
    root = copy_project(ingested, tmp_path_factory.mktemp("fastpath") / "project")
    settings = task_settings(root, "binary")
    wiring.feature_store(settings).materialize(until=utc("2013-05-01"))
    versions = {}
    for task in ("binary", "multiclass", "regression"):
        result = app.train(task_settings(root, task), *TRAIN, actor="tests")
        assert result.scoring.startswith("fast path treelite"), result.scoring
        versions[task] = result.version
    versions["adopted"] = adopt(settings)
    return {"root": root, "settings": settings, "versions": versions}


def adopt(settings) -> int:
    """A team's HistGradientBoosting, logged to MLflow by hand, adopted."""
    import mlflow
    import skops.io
    from mlflow.models import infer_signature

    frame = build_frame(settings, wiring.feature_store(settings), *TRAIN)
    x = prepare(frame.features)
    model = train_default(x, frame.label, task="binary", seed=5)
    config = load_registry_config(settings)
    mlflow.set_tracking_uri(config.tracking_uri)
    mlflow.set_registry_uri(config.registry_uri)
    experiment = mlflow.MlflowClient().create_experiment(  # artifacts in the test's folder
        "team-experiments", artifact_location=str(settings.config_path.parent / "team-artifacts")
    )
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.sklearn.log_model(
            model,
            name="team",
            skops_trusted_types=skops.io.get_untrusted_types(data=skops.io.dumps(model)),
            signature=infer_signature(x, model.predict_proba(x.head())),
        )
    result = adopt_model(
        settings,
        f"runs:/{run.info.run_id}/team",
        "binary",
        AdoptWindows(*TRAIN, *EVAL),
        actor="tests",
    )
    assert result.scoring.startswith("fast path treelite"), result.scoring
    return result.version


def contract(settings) -> list[list[str]]:
    from prodguard.features.feast_adapter import feature_contract

    return feature_contract(wiring.feature_store(settings).versions())


def stored_artifact(settings, run_id: str) -> Path:
    root = Path(load_registry_config(settings).artifact_location)
    (path,) = root.rglob(f"{run_id}/artifacts/{names.FAST_PATH_ARTIFACT}")
    return path


def evaluation_frame(settings, loaded: LoadedModel):
    features = build_frame(settings, wiring.feature_store(settings), *EVAL).features
    return loaded.frame(features[list(loaded.columns)].to_dict("records"))


@pytest.mark.parametrize("case", ["binary", "multiclass", "regression", "adopted"])
def test_the_stored_fast_path_is_served_and_scores_as_the_model(project, case) -> None:
    settings, version = project["settings"], project["versions"][case]
    registry = wiring.registry_operations(settings).registry
    tags = registry.version(version).tags
    assert tags[names.FAST_PATH].startswith("treelite ")
    assert float(tags[names.FAST_PATH_PARITY]) <= PARITY
    assert int(tags[names.FAST_PATH_ROWS]) > 1000  # the evaluation rows and the probe rows
    stored = stored_artifact(settings, tags[names.RUN_ID]).read_bytes()
    assert hashlib.sha256(stored).hexdigest() == tags[names.FAST_PATH_DIGEST]
    assert registry.load_bytes_artifact(version, names.FAST_PATH_ARTIFACT) == stored
    assert app.version_summary(registry.version(version))["scoring"].startswith(
        "fast path treelite"
    )

    loaded = load_verified(registry, contract(settings), version)
    assert isinstance(loaded.scorer, TreeliteScorer), loaded.scoring
    assert loaded.scoring.startswith("fast path treelite") and "stored artifact" in loaded.scoring
    frame = evaluation_frame(settings, loaded)
    served = loaded.raw(frame)
    model = ModelScorer(loaded.pipeline, loaded.spec.task).raw(frame)
    assert served.shape == model.shape and len(frame) > 500
    assert np.max(np.abs(served - model)) <= PARITY
    itself = replace(loaded, scorer=None)
    gap = np.asarray(loaded.score(frame)) - np.asarray(itself.score(frame))
    assert np.max(np.abs(gap)) <= PARITY


def test_a_tampered_fast_path_is_not_used_and_the_model_scores_itself(project, caplog) -> None:
    settings, version = project["settings"], project["versions"]["binary"]
    registry = wiring.registry_operations(settings).registry
    path = stored_artifact(settings, registry.version(version).tags[names.RUN_ID])
    original = path.read_bytes()
    tampered = bytearray(original)
    tampered[len(tampered) // 2] ^= 0x01
    path.write_bytes(bytes(tampered))
    try:
        loaded = load_verified(registry, contract(settings), version)
    finally:
        path.write_bytes(original)
    assert loaded.scorer is None
    assert loaded.scoring.startswith(
        "the model itself: its fast_path.treelite does not match the digest recorded"
    )
    lines = [r.getMessage() for r in caplog.records if "fast path not used" in r.getMessage()]
    assert len(lines) == 1 and f"v{version}" in lines[0]
