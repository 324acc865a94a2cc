"""The model pipeline and its evaluation.

HistGradientBoosting with native categorical handling: categorical columns are ordinal-encoded
(unknown and missing categories become NaN, which the trees route as missing), numeric columns
pass through with their NaNs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import (
    brier_score_loss,
    f1_score,
    log_loss,
    precision_score,
    recall_score,
    roc_auc_score,
)
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OrdinalEncoder

from prodguard.training.dataset import is_categorical

MAX_CATEGORIES = 250  # HistGradientBoosting bins categories into at most 255 bins


def build_pipeline(features: pd.DataFrame, seed: int) -> Pipeline:
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
    classifier = HistGradientBoostingClassifier(
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
    return Pipeline([("encode", encode), ("model", classifier)])


def prepare(features: pd.DataFrame) -> pd.DataFrame:
    """Categorical columns as object with None for missing (what the encoder was fitted on)."""
    frame = features.copy()
    for column in frame.columns:
        if is_categorical(frame[column]):
            frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
    return frame


def evaluate(
    pipeline: Pipeline, features: pd.DataFrame, label: pd.Series, threshold: float
) -> tuple[dict[str, float], dict[str, Any]]:
    """Metrics on held-out rows, and the calibration table (10 equal-width bins)."""
    scores = pipeline.predict_proba(prepare(features))[:, 1]
    flags = (scores >= threshold).astype(int)
    y = label.to_numpy()
    metrics = {
        "auc": float(roc_auc_score(y, scores)) if len(set(y)) > 1 else float("nan"),
        "log_loss": float(log_loss(y, scores, labels=[0, 1])),
        "brier": float(brier_score_loss(y, scores)),
        "precision": float(precision_score(y, flags, zero_division=0)),
        "recall": float(recall_score(y, flags, zero_division=0)),
        "f1": float(f1_score(y, flags, zero_division=0)),
        "base_rate": float(y.mean()),
        "mean_score": float(scores.mean()),
    }
    edges = np.linspace(0, 1, 11)
    index = np.clip(np.digitize(scores, edges[1:-1]), 0, 9)
    table = []
    ece = 0.0
    for b in range(10):
        mask = index == b
        if not mask.any():
            continue
        predicted, observed = float(scores[mask].mean()), float(y[mask].mean())
        ece += mask.mean() * abs(predicted - observed)
        table.append(
            {
                "bin": [float(edges[b]), float(edges[b + 1])],
                "count": int(mask.sum()),
                "mean_predicted": predicted,
                "observed_rate": observed,
            }
        )
    metrics["ece"] = float(ece)
    return metrics, {"threshold": threshold, "bins": table}
