"""Quarantine: failing batches are kept on disk with the reason, never written to the store."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from prodguard.durable import write_json_atomic, write_parquet_atomic
from prodguard.errors import StorageError


@dataclass(frozen=True)
class QuarantinedBatch:
    source: str
    batch_id: str
    path: Path


class Quarantine:
    def __init__(self, root: Path) -> None:
        self.root = root

    def put(
        self,
        source: str,
        batch_id: str,
        frame: pd.DataFrame,
        record: dict[str, Any],
        validation: dict[str, Any] | None,
    ) -> QuarantinedBatch:
        """Store the batch, its reason (``reason.json``) and validation result atomically.

        A batch already quarantined under the same id (same content) is kept as it is.
        """
        target = self.root / source / batch_id
        if (target / "reason.json").exists():
            return QuarantinedBatch(source, batch_id, target)
        (self.root / source).mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.root / source, prefix=f".{batch_id}."))
        try:
            write_parquet_atomic(frame, staging / "batch.parquet")
            if validation is not None:
                write_json_atomic(validation, staging / "validation.json")
            write_json_atomic(record, staging / "reason.json")
            os.replace(staging, target)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise StorageError(f"cannot quarantine batch in {target}: {exc.strerror}") from None
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return QuarantinedBatch(source, batch_id, target)

    def list(self, source: str | None = None) -> list[dict[str, Any]]:
        if not self.root.exists():
            return []
        sources = [source] if source else sorted(p.name for p in self.root.iterdir() if p.is_dir())
        found = []
        for name in sources:
            folder = self.root / name
            if not folder.is_dir():
                continue
            for batch in sorted(folder.iterdir()):
                reason = batch / "reason.json"
                if batch.name.startswith(".") or not reason.exists():
                    continue
                try:
                    found.append(json.loads(reason.read_text(encoding="utf-8")))
                except (OSError, ValueError) as exc:
                    raise StorageError(
                        f"quarantine record {reason} is unreadable ({type(exc).__name__}); "
                        "the batch itself is in batch.parquet beside it"
                    ) from None
        return found
