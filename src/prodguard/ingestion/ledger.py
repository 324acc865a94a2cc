"""The ingestion ledger: one durable record per batch (``state/ingest_log.jsonl``).

Lineage reads it to name the suites that actually validated the rows a model was trained on.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from prodguard.durable import append_jsonl, read_jsonl

FILE_NAME = "ingest_log.jsonl"


class Ledger:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / FILE_NAME

    def append(self, record: dict[str, Any]) -> None:
        append_jsonl(record, self.path)

    def records(self) -> list[dict[str, Any]]:
        return read_jsonl(self.path)

    def suite_digests(self, start: datetime, end: datetime) -> dict[str, list[str]]:
        """Per source, the digests of the suites that validated batches written for rows in
        ``[start, end)`` (batch files and static tables, which have no window, always count)."""
        found: dict[str, set[str]] = {}
        for record in self.records():
            digest = (record.get("details") or {}).get("suite_digest")
            if record.get("status") != "written" or not digest:
                continue
            if record.get("start") and record.get("end"):
                begin = datetime.fromisoformat(record["start"])
                finish = datetime.fromisoformat(record["end"])
                static = record.get("details", {}).get("static", False)
                if not static and (finish <= start or begin >= end):
                    continue
            found.setdefault(record["source"], set()).add(digest)
        return {source: sorted(digests) for source, digests in sorted(found.items())}
