"""Train the Clark/Lake ridership model outside prodguard and log it to the project's MLflow.

A plain script, as a team would write it: the training frame comes from the feature store
(point in time, through prodguard's Python API); a histogram gradient boosting model (a
regressor, or a classifier for the multi-class variant) is fitted and logged to MLflow with a
signature. `prodguard adopt --model-uri models:/NAME/VERSION` takes it from there.

    python train_outside.py --start 2010-01-01 --end 2015-01-01 [--config prodguard.yaml]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.models import infer_signature
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.metrics import accuracy_score, mean_absolute_error
from threadpoolctl import threadpool_limits

from prodguard.config import load_settings
from prodguard.features.feast_adapter import FeastStore
from prodguard.registry.config import load_registry_config
from prodguard.training.dataset import build_frame

HERE = Path(__file__).resolve().parent
EXPERIMENT = "chicago-outside"
TREE_PREDICTOR = "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=HERE / "prodguard.yaml")
    parser.add_argument("--start", default="2010-01-01")
    parser.add_argument("--end", default="2015-01-01")
    parser.add_argument("--holdout-days", type=int, default=90)
    args = parser.parse_args()
    settings = load_settings(args.config)
    start, end = (pd.Timestamp(t, tz="UTC") for t in (args.start, args.end))
    holdout = end - pd.Timedelta(days=args.holdout_days)
    frame = build_frame(settings, FeastStore(settings), start, end)  # point in time, per day
    features, label = frame.features, frame.label
    fit = (frame.entities["event_timestamp"] < holdout).to_numpy()
    regression = settings.model.task == "regression"
    estimator = HistGradientBoostingRegressor if regression else HistGradientBoostingClassifier
    model = estimator(max_iter=300, learning_rate=0.05, random_state=42)
    with threadpool_limits(1):  # 2,000 rows: one thread; OpenMP threads on a busy host cost minutes
        model.fit(features[fit], label[fit])
    metric, score = ("mae", mean_absolute_error) if regression else ("accuracy", accuracy_score)
    held_out = score(label[~fit], model.predict(features[~fit]))
    output = (
        model.predict(features.head(100)) if regression else model.predict_proba(features.head(100))
    )

    registry = load_registry_config(settings)
    mlflow.set_tracking_uri(registry.tracking_uri)
    mlflow.set_registry_uri(registry.registry_uri)
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    experiment_id = (
        experiment.experiment_id
        if experiment
        else mlflow.create_experiment(EXPERIMENT, artifact_location=registry.artifact_location)
    )
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"hgb {args.start}..{args.end}"):
        mlflow.log_params({"start": args.start, "end": args.end, "rows": int(fit.sum())})
        mlflow.log_metric(f"holdout_{metric}", held_out)
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(features.head(100), output),
            input_example=features.head(2),
            pip_requirements=["scikit-learn==1.9.1", "pandas==2.3.3"],
            skops_trusted_types=[TREE_PREDICTOR],  # built by this script: trusted
            registered_model_name=settings.model.name,
        )
    version = info.registered_model_version
    print(f"{settings.model.name} version {version}: held-out {metric} {held_out:.3f}")


if __name__ == "__main__":
    main()
