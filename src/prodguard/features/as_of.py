"""The online store as it stood at an instant, rebuilt from the offline store (for replays).

A staging replay moves a clock through a past period; materializing Feast's online store at
every step would cost seconds each. ``AsOfFeatures`` answers the same lookups from the
ingested source tables instead: for each feature view and entity, the latest row whose event
timestamp is at or before the clock's time, with that timestamp (``<feature>__ts``, Unix
seconds) — what the online store holds after materializing up to that time. TTL is left to
the caller, exactly as with Feast's online reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from prodguard.clock import Clock
from prodguard.errors import FeatureStoreError
from prodguard.features.feast_adapter import ViewVersion
from prodguard.ingestion.offline import OfflineStore


@dataclass(frozen=True)
class _ViewIndex:
    view: ViewVersion
    names: tuple[str, ...]
    rows: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray]]  # key -> (times ns, row numbers)
    values: np.ndarray  # object matrix, one column per feature
    seconds: np.ndarray  # event time of each row, Unix seconds


class AsOfFeatures:
    def __init__(
        self,
        offline: OfflineStore,
        views: Sequence[ViewVersion],
        clock: Clock,
        timestamps: dict[str, str] | None = None,
    ) -> None:
        """``timestamps`` maps a source to its timestamp column (default ``event_timestamp``)."""
        self._clock = clock
        self._views = [self._index(offline, v, (timestamps or {}).get(v.source)) for v in views]

    @staticmethod
    def _index(offline: OfflineStore, view: ViewVersion, timestamp: str | None) -> _ViewIndex:
        frame = offline.read(view.source)
        names = tuple(name for name, _ in view.features)
        column = timestamp or "event_timestamp"
        if frame is None:
            raise FeatureStoreError(
                f"no ingested '{view.source}' rows for view {view.name}; run `prodguard ingest`"
            )
        missing = sorted((set(names) | set(view.join_keys) | {column}) - set(frame.columns))
        if missing:
            raise FeatureStoreError(f"source '{view.source}' lacks columns {missing}")
        stamps = pd.to_datetime(frame[column], utc=True)
        order = np.lexsort(
            (
                stamps.to_numpy("int64"),
                *reversed([frame[k].astype(str).to_numpy() for k in view.join_keys]),
            )
        )
        frame, stamps = (
            frame.iloc[order].reset_index(drop=True),
            stamps.iloc[order].reset_index(drop=True),
        )
        nanos = stamps.to_numpy("int64")
        rows: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray]] = {}
        keys = frame[list(view.join_keys)].astype(str).itertuples(index=False, name=None)
        positions: dict[tuple[str, ...], list[int]] = {}
        for position, key in enumerate(keys):
            positions.setdefault(key, []).append(position)
        for key, found in positions.items():
            index = np.asarray(found)
            rows[key] = (nanos[index], index)
        return _ViewIndex(
            view,
            names,
            rows,
            frame[list(names)].to_numpy(dtype=object),
            nanos / 1e9,
        )

    def online_records(self, entity_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One dict per entity row: each feature's value and ``<feature>__ts`` (0: no row)."""
        now = pd.Timestamp(self._clock.now()).value
        records: list[dict[str, Any]] = [{} for _ in entity_rows]
        for index in self._views:
            for entity, record in zip(entity_rows, records, strict=True):
                key = tuple(str(entity.get(k)) for k in index.view.join_keys)
                found = index.rows.get(key)
                at = -1 if found is None else int(np.searchsorted(found[0], now, "right")) - 1
                if found is None or at < 0:
                    record.update({n: None for n in index.names})
                    record.update({f"{n}__ts": 0.0 for n in index.names})
                    continue
                row = found[1][at]
                stamp = float(index.seconds[row])
                for j, name in enumerate(index.names):
                    record[name] = index.values[row, j]
                    record[f"{name}__ts"] = stamp
        return records
