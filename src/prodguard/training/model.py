"""The default model pipeline and the held-out evaluation.

HistGradientBoosting (a classifier or a regressor by task) with native categorical handling:
categorical columns are ordinal-encoded (unknown and missing categories become NaN, which the
trees route as missing), numeric columns pass through with their NaNs. A project may name its own
trainer (``model.trainer``): it receives the same prepared features.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OrdinalEncoder

from prodguard.tasks import ModelScorer, Task, TaskSpec
from prodguard.tasks import evaluate as evaluate_outputs
from prodguard.training.dataset import is_categorical

MAX_CATEGORIES = 250  # HistGradientBoosting bins categories into at most 255 bins


def train_default(
    features: pd.DataFrame, label: pd.Series, *, task: str = "binary", seed: int = 42
) -> Pipeline:
    """The default trainer: ``build_pipeline`` fitted on features already ``prepare``-d (what
    every trainer receives, and what serving passes to the model)."""
    return build_pipeline(features, seed, Task(task)).fit(features, label)


def build_pipeline(features: pd.DataFrame, seed: int, task: Task = Task.BINARY) -> Pipeline:
    categorical = [c for c in features.columns if is_categorical(features[c])]
    numeric = [c for c in features.columns if c not in categorical]
    encode = ColumnTransformer(
        [
            (
                "categorical",
                OrdinalEncoder(
                    handle_unknown="use_encoded_value",
                    unknown_value=np.nan,
                    encoded_missing_value=np.nan,
                    max_categories=MAX_CATEGORIES,
                    dtype=np.float64,
                ),
                categorical,
            ),
            ("numeric", "passthrough", numeric),
        ],
        verbose_feature_names_out=False,
    )
    estimator = HistGradientBoostingClassifier if task.classifier else HistGradientBoostingRegressor
    model = estimator(
        categorical_features=list(range(len(categorical))),
        learning_rate=0.08,
        max_iter=250,
        max_leaf_nodes=31,
        l2_regularization=1.0,
        early_stopping=True,
        validation_fraction=0.1,
        n_iter_no_change=20,
        random_state=seed,
    )
    return Pipeline([("encode", encode), ("model", model)])


def prepare(features: pd.DataFrame) -> pd.DataFrame:
    """Categorical columns as object with None for missing (what the encoder was fitted on)."""
    frame = features.copy()
    for column in frame.columns:
        if is_categorical(frame[column]):
            frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
    return frame


def evaluate(
    model: Any, spec: TaskSpec, features: pd.DataFrame, label: pd.Series
) -> tuple[dict[str, float], dict[str, Any]]:
    """The task's metrics on held-out rows, and its details (binary: the calibration table)."""
    scorer = ModelScorer(model, spec.task)
    frame = prepare(features)
    return evaluate_outputs(spec, label.to_numpy(), scorer.raw(frame), scorer.interval(frame))
