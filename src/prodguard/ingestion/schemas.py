"""Recorded schema per source: the contract that later batches are compared with."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from prodguard.contracts.schema import Schema
from prodguard.durable import write_json_atomic
from prodguard.errors import StorageError


class SchemaRegistry:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, source: str) -> Path:
        return self.root / f"{source}.json"

    def get(self, source: str) -> Schema | None:
        path = self._path(source)
        if not path.exists():
            return None
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            return Schema(columns=tuple((str(c), str(t)) for c, t in document["columns"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StorageError(
                f"recorded schema {path} is unreadable ({type(exc).__name__}); restore it "
                "from the offline store's columns or a backup"
            ) from None

    def record(self, source: str, schema: Schema, when: datetime) -> None:
        write_json_atomic(
            {
                "source": source,
                "fingerprint": schema.fingerprint,
                "columns": [
                    list(pair) for pair in schema.columns
                ],  # ordered: renames match by position
                "recorded_at": when.isoformat(),
            },
            self._path(source),
        )
