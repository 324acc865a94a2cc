"""Use cases behind the CLI: each builds its components from the settings and runs one job.

The CLI only parses arguments and renders results; everything it does is callable from here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from prodguard.alerts import Alerter, JsonlSink, LogSink
from prodguard.config import Settings
from prodguard.errors import InputError
from prodguard.ingestion.pipeline import BatchResult, Ingestor
from prodguard.project import load_loader


def alerter_for(settings: Settings) -> Alerter:
    return Alerter([LogSink(), JsonlSink(settings.paths.alerts_file)])


@dataclass(frozen=True)
class IngestReport:
    batches: list[BatchResult]
    seconds: float
    validation_seconds: float
    suite_digests: dict[str, str] = field(default_factory=dict)

    @property
    def written(self) -> int:
        return sum(b.rows for b in self.batches if b.status == "written")

    @property
    def quarantined(self) -> list[BatchResult]:
        return [b for b in self.batches if b.status == "quarantined"]


def ingest(
    settings: Settings,
    start: datetime | None = None,
    end: datetime | None = None,
    sources: list[str] | None = None,
    batch_file: Path | None = None,
    on_batch: Callable[[BatchResult], None] | None = None,
) -> IngestReport:
    """Ingest a time window of the project's sources, or one batch file for one source."""
    began = time.perf_counter()
    if batch_file is not None:
        if not sources or len(sources) != 1:
            raise InputError("--file needs exactly one --source naming the table it belongs to")
        ingestor = Ingestor(settings, alerter_for(settings))
        results = [ingestor.ingest_file(sources[0], batch_file)]
        if on_batch is not None:
            on_batch(results[0])
    else:
        if start is None or end is None:
            raise InputError("give --start and --end (or --file with --source)")
        ingestor = Ingestor(settings, alerter_for(settings), loader=load_loader(settings))
        results = ingestor.ingest_window(start, end, sources, on_batch=on_batch)
    return IngestReport(
        batches=results,
        seconds=time.perf_counter() - began,
        validation_seconds=sum(r.validation_seconds for r in results),
        suite_digests={name: s.digest for name, s in ingestor.check_suites().items()},
    )


def feature_store(settings: Settings) -> Any:
    from prodguard.features.feast_adapter import FeastStore

    return FeastStore(settings)


@dataclass(frozen=True)
class MaterializeReport:
    views: list[dict[str, Any]]
    online_rows: dict[str, int]
    until: datetime
    start: datetime | None
    seconds: float


def materialize(
    settings: Settings, until: datetime, start: datetime | None = None
) -> MaterializeReport:
    """Apply the feature repo and load feature values up to ``until`` into the online store."""
    began = time.perf_counter()
    store = feature_store(settings)
    result = store.materialize(until=until, start=start)
    views = [
        {
            "name": v.name,
            "version": v.version,
            "ttl_seconds": v.ttl_seconds,
            "features": len(v.features),
        }
        for v in store.versions()
    ]
    return MaterializeReport(
        views=views,
        online_rows=result.online_rows,
        until=until,
        start=start,
        seconds=time.perf_counter() - began,
    )


def lookup(settings: Settings, entity: dict[str, str]) -> dict[str, Any]:
    """Online feature values (and their event timestamps) for one entity row."""
    if not entity:
        raise InputError("give at least one entity key, e.g. origin=JFK")
    frame = feature_store(settings).online_features([entity])
    return {k: _plain(v) for k, v in frame.iloc[0].to_dict().items()}


def _plain(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "item"):
        return value.item()
    return value
