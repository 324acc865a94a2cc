"""Per-feature reference statistics recorded with each model version.

Serving uses the medians/modes as fallbacks; monitoring uses the bins for PSI.
Numeric features: median, null rate, interior quantile edges (deciles, de-duplicated) and the
fraction of non-null training values in each of the ``len(edges) + 1`` bins
``(-inf, e1], (e1, e2], ..., (ek, +inf)``. Categorical features: mode, null rate and the
fraction of each category seen in training.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from prodguard.training.dataset import is_categorical

QUANTILES = np.linspace(0.1, 0.9, 9)


def reference_stats(features: pd.DataFrame) -> dict[str, dict[str, Any]]:
    stats: dict[str, dict[str, Any]] = {}
    for name in features.columns:
        column = features[name]
        null_rate = float(column.isna().mean())
        present = column.dropna()
        if is_categorical(column):
            shares = present.astype(str).value_counts(normalize=True)
            categories = {str(k): float(v) for k, v in shares.items()}
            stats[name] = {
                "kind": "categorical",
                "null_rate": null_rate,
                "mode": str(shares.index[0]) if len(shares) else None,
                "categories": categories,
            }
            continue
        values = present.to_numpy(dtype="float64")
        if values.size == 0:
            stats[name] = {
                "kind": "numeric",
                "null_rate": null_rate,
                "median": None,
                "bin_edges": [],
                "bin_fractions": [],
            }
            continue
        edges = np.unique(np.quantile(values, QUANTILES))
        counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1)
        stats[name] = {
            "kind": "numeric",
            "null_rate": null_rate,
            "median": float(np.median(values)),
            "min": float(values.min()),
            "max": float(values.max()),
            "bin_edges": [float(e) for e in edges],
            "bin_fractions": [float(c) for c in counts / values.size],
        }
    return stats


def fallbacks(stats: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The value a missing feature falls back to: the training median, or mode."""
    return {name: s["median"] if s["kind"] == "numeric" else s["mode"] for name, s in stats.items()}
