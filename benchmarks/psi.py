"""PSI throughput: prodguard's PSI core against Evidently's PSI stat test, in one run.

    .venv/bin/python benchmarks/psi.py [--rows 200000 1000000] [--features 20]

For each size it prints seconds per window for
- Evidently's ``psi`` stat test (bins recomputed from both samples every time),
- prodguard with the same (Evidently's) bins — values must agree,
- prodguard's monitoring path: quantile bins fitted on the reference once, a window costs
  counting its rows (the window's transposition into columns is included),
and the ratios. Figures only; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pandas as pd

os.environ.setdefault("DO_NOT_TRACK", "1")


def _seconds(function, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return best


def run(rows: int, features: int) -> None:
    from evidently.legacy.calculations.stattests.psi import _psi
    from evidently.legacy.core import ColumnType

    from prodguard.monitoring import psi

    rng = np.random.default_rng(7)
    reference = rng.normal(size=(rows, features))
    current = rng.normal(loc=0.05, size=(rows, features))
    ref_frame, cur_frame = pd.DataFrame(reference), pd.DataFrame(current)

    def evidently() -> list[float]:
        return [
            float(_psi(ref_frame[c], cur_frame[c], ColumnType.Numerical, 0.1)[0])
            for c in ref_frame.columns
        ]

    def same_bins() -> list[float]:
        values = []
        for c in range(features):
            edges = np.histogram_bin_edges(
                np.concatenate([reference[:, c], current[:, c]]), bins="sturges"
            )
            bins = psi.EdgeBins(edges)
            values.append(
                psi.psi_from_counts(bins.counts(reference[:, c]), bins.counts(current[:, c]))
            )
        return values

    fitted = [psi.NumericBins.from_reference(reference[:, c]) for c in range(features)]
    reference_counts = [b.counts(reference[:, c]) for c, b in enumerate(fitted)]

    def monitoring_window() -> list[float]:
        columns = np.ascontiguousarray(current.T)  # a window arrives column by column
        return [
            psi.psi_from_counts(reference_counts[c], b.counts(columns[c]))
            for c, b in enumerate(fitted)
        ]

    theirs, ours = evidently(), same_bins()
    worst = max(abs(a - b) for a, b in zip(theirs, ours, strict=True))
    t_evidently = _seconds(evidently, repeat=1 if rows >= 1_000_000 else 2)
    t_same = _seconds(same_bins)
    t_window = _seconds(monitoring_window)
    print(
        f"{rows:>9} x {features}: evidently {t_evidently:.3f} s | prodguard same bins "
        f"{t_same:.3f} s ({t_evidently / t_same:.1f}x) | prodguard window with fitted bins "
        f"{t_window:.3f} s ({t_evidently / t_window:.1f}x) | max |diff| {worst:.2e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[200_000, 1_000_000])
    parser.add_argument("--features", type=int, default=20)
    args = parser.parse_args()
    for rows in args.rows:
        run(rows, args.features)


if __name__ == "__main__":
    main()
