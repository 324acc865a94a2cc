"""The offline store: one parquet file per source, which Feast's file sources read.

Writes merge the batch into the existing rows, keeping one row per key (the newest write wins),
under a per-source lock, and replace the file atomically: re-ingesting a batch never duplicates
rows, and a crash never leaves a half-written file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from prodguard.durable import locked, write_parquet_atomic
from prodguard.errors import StorageError


@dataclass(frozen=True)
class WriteResult:
    rows_in_batch: int
    rows_added: int
    rows_replaced: int
    rows_total: int


class OfflineStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, source: str) -> Path:
        return self.root / f"{source}.parquet"

    def read(self, source: str) -> pd.DataFrame | None:
        path = self.path(source)
        if not path.exists():
            return None
        try:
            return pd.read_parquet(path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many types
            raise StorageError(f"offline store file {path} is unreadable: {exc}") from None

    def columns(self, source: str) -> list[str] | None:
        """The source's column names, from the file's schema (no rows read); None when nothing
        was ingested."""
        path = self.path(source)
        if not path.exists():
            return None
        try:
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many types
            raise StorageError(f"offline store file {path} is unreadable: {exc}") from None

    def sample(self, source: str, rows: int) -> pd.DataFrame | None:
        """At least ``rows`` rows (all when fewer) from row groups spread over the source,
        reading only those groups: memory bounded by the groups read, whatever the source's
        size. None when nothing was ingested."""
        path = self.path(source)
        if not path.exists():
            return None
        try:
            import pyarrow.parquet as pq

            file = pq.ParquetFile(path)
            groups = file.metadata.num_row_groups
            if groups <= 1 or file.metadata.num_rows <= rows:
                return file.read().to_pandas()
            per_group = file.metadata.num_rows / groups
            wanted = min(groups, math.ceil(rows / per_group) + 1)
            picked = sorted({int(i) for i in np.linspace(0, groups - 1, wanted)})
            return file.read_row_groups(picked).to_pandas()
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many types
            raise StorageError(f"offline store file {path} is unreadable: {exc}") from None

    def write(
        self, source: str, batch: pd.DataFrame, keys: list[str], timestamp: str
    ) -> WriteResult:
        with locked(self.root / f".{source}.lock"):
            existing = self.read(source)
            if existing is None or existing.empty:
                merged = batch.drop_duplicates(keys, keep="last")
                added, replaced = len(merged), 0
            else:
                if set(existing.columns) != set(batch.columns):
                    raise StorageError(
                        f"{source} batch columns differ from the stored ones (missing "
                        f"{sorted(set(existing.columns) - set(batch.columns))}, new "
                        f"{sorted(set(batch.columns) - set(existing.columns))}); the store "
                        "keeps one schema per source"
                    )
                existing = existing[list(batch.columns)]
                merged = pd.concat([existing, batch], ignore_index=True)
                merged = merged.drop_duplicates(keys, keep="last")
                added = len(merged) - len(existing)
                replaced = len(batch.drop_duplicates(keys)) - added
            merged = merged.sort_values([timestamp, *[k for k in keys if k != timestamp]])
            write_parquet_atomic(merged.reset_index(drop=True), self.path(source))
        return WriteResult(
            rows_in_batch=len(batch),
            rows_added=int(added),
            rows_replaced=int(replaced),
            rows_total=len(merged),
        )
