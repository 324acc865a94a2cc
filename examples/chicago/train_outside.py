"""Train the Clark/Lake ridership model outside prodguard and log it to the project's MLflow.

A plain script, as a team would write it: the training frame comes from the feature store
(point in time, through prodguard's Python API), the model is a scikit-learn pipeline, and the
run is logged with a signature. `prodguard adopt --model-uri models:/NAME/VERSION` takes it
from there.

    python train_outside.py --start 2010-01-01 --end 2015-01-01 [--config prodguard.yaml]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.models import infer_signature
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.metrics import mean_absolute_error
from threadpoolctl import threadpool_limits

from prodguard import app
from prodguard.config import load_settings
from prodguard.ingestion.offline import OfflineStore
from prodguard.registry.config import load_registry_config
from prodguard.training.dataset import load_request_features

HERE = Path(__file__).resolve().parent
EXPERIMENT = "chicago-outside"
TREE_PREDICTOR = "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"


def training_frame(settings, start: pd.Timestamp, end: pd.Timestamp):
    """Labelled ridership rows of [start, end) with their features as of each day."""
    rows = OfflineStore(settings.paths.offline_dir).read("ridership")
    rows = rows[(rows.event_timestamp >= start) & (rows.event_timestamp < end)]
    rows = rows.dropna(subset=[settings.model.label]).reset_index(drop=True)
    stored = app.feature_store(settings).historical_features(rows[["city", "event_timestamp"]])
    stored = stored.sort_values("event_timestamp").reset_index(drop=True)
    request = load_request_features(settings.model)(rows)
    store_features = stored.drop(columns=["city", "event_timestamp"])
    features = pd.concat([request, store_features], axis=1).astype("float64")
    return features, rows[settings.model.label], rows["event_timestamp"]


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
    features, label, stamps = training_frame(settings, start, end)
    fit = (stamps < holdout).to_numpy()
    model = HistGradientBoostingRegressor(max_iter=300, learning_rate=0.05, random_state=42)
    with threadpool_limits(1):  # 2,000 rows: one thread; OpenMP threads on a busy host cost minutes
        model.fit(features[fit], label[fit])
    mae = mean_absolute_error(label[~fit], model.predict(features[~fit]))

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
        mlflow.log_metric("holdout_mae", mae)
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(features.head(100), model.predict(features.head(100))),
            input_example=features.head(2),
            pip_requirements=["scikit-learn==1.9.1", "pandas==2.3.3"],
            skops_trusted_types=[TREE_PREDICTOR],  # built by this script: trusted
            registered_model_name=settings.model.name,
        )
    print(f"{settings.model.name} version {info.registered_model_version}: holdout MAE {mae:.3f}")


if __name__ == "__main__":
    main()
