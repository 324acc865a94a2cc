"""Per-feature reference statistics recorded with each model version.

Serving uses the medians/modes as fallbacks; monitoring uses the bins for PSI.
Numeric features: median, null rate, interior quantile edges (deciles, de-duplicated) and the
fraction of non-null training values in each of the ``len(edges) + 1`` bins
``(-inf, e1], (e1, e2], ..., (ek, +inf)``. Categorical features: mode, null rate and the
fraction of each category (categories below 0.1 % are folded into ``__other__``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from prodguard.training.dataset import is_categorical

QUANTILES = np.linspace(0.1, 0.9, 9)
MIN_CATEGORY_SHARE = 0.001


def reference_stats(features: pd.DataFrame) -> dict[str, dict[str, Any]]:
    stats: dict[str, dict[str, Any]] = {}
    for name in features.columns:
        column = features[name]
        null_rate = float(column.isna().mean())
        present = column.dropna()
        if is_categorical(column):
            shares = present.astype(str).value_counts(normalize=True)
            kept = shares[shares >= MIN_CATEGORY_SHARE]
            categories = {str(k): float(v) for k, v in kept.items()}
            if len(kept) < len(shares):
                categories["__other__"] = float(shares[shares < MIN_CATEGORY_SHARE].sum())
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
