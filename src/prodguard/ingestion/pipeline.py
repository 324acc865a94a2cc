"""The ingestion pipeline: schema check -> expectation suite -> offline store or quarantine.

A batch reaches the offline store only when its schema is compatible with the recorded one and
it passes its suite. Anything else is quarantined with its reason and an alert is sent; the store
is left untouched.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from prodguard.alerts import Alert, Alerter
from prodguard.clock import Clock, SystemClock
from prodguard.config import Settings
from prodguard.contracts.gx_adapter import GxValidator, ValidationReport
from prodguard.contracts.schema import SchemaDiff, diff, schema_of
from prodguard.contracts.suites import Suite, read_suite
from prodguard.digests import frame_digest
from prodguard.errors import (
    DataSourceError,
    InputError,
    NoDataError,
    ProdguardError,
    first_line,
)
from prodguard.ingestion.ledger import Ledger
from prodguard.ingestion.offline import OfflineStore
from prodguard.ingestion.quarantine import Quarantine
from prodguard.ingestion.schemas import SchemaRegistry
from prodguard.project import SourceLoader
from prodguard.timewindows import split_window

Status = Literal["written", "quarantined", "empty"]


@dataclass(frozen=True)
class BatchResult:
    source: str
    batch_id: str
    status: Status
    rows: int
    start: str | None = None
    end: str | None = None
    rows_added: int = 0
    rows_replaced: int = 0
    failures: tuple[str, ...] = ()
    schema_change: str | None = None
    quarantine_path: str | None = None
    validation_seconds: float = 0.0
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Ingestor:
    def __init__(
        self,
        settings: Settings,
        alerter: Alerter,
        loader: SourceLoader | None = None,
        validator: GxValidator | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self.alerter = alerter
        self.loader = loader
        self.validator = validator or GxValidator()
        self.clock = clock or SystemClock()
        paths = settings.paths
        self.store = OfflineStore(paths.offline_dir)
        self.quarantine = Quarantine(paths.quarantine_dir)
        self.schemas = SchemaRegistry(paths.state_dir / "schemas")
        self.ledger = Ledger(paths.state_dir)
        self._suites: dict[str, Suite] = {}

    def suite(self, source: str) -> Suite:
        if source not in self._suites:
            suite = read_suite(self.settings.suite_path(source))
            self.validator.compile(suite)
            self._suites[source] = suite
        return self._suites[source]

    def check_suites(self) -> dict[str, Suite]:
        """Read and compile every configured suite (fails before anything is written)."""
        return {name: self.suite(name) for name in self.settings.sources}

    def ingest_window(
        self,
        start: datetime,
        end: datetime,
        sources: Iterable[str] | None = None,
        on_batch: Callable[[BatchResult], None] | None = None,
    ) -> list[BatchResult]:
        """Load every source for ``[start, end)``, cut it into batches and ingest each one."""
        if self.loader is None:
            raise InputError("no project loader configured; set project.loader in prodguard.yaml")
        if end <= start:
            raise InputError("--end must be after --start")
        names = list(sources) if sources is not None else list(self.settings.sources)
        unknown = [n for n in names if n not in self.settings.sources]
        if unknown:
            raise InputError(
                f"unknown source(s) {unknown}; configured: {sorted(self.settings.sources)}"
            )
        self.check_suites()
        results: list[BatchResult] = []
        for name in names:
            config = self.settings.sources[name]
            if config.static:
                windows = [(start, end)]
            else:
                windows = split_window(start, end, self.settings.ingest.batch)
            for batch_start, batch_end in windows:
                frame = self._load(name, batch_start, batch_end)
                result = self.ingest_frame(name, frame, batch_start, batch_end)
                results.append(result)
                if on_batch is not None:
                    on_batch(result)
        if all(r.status == "empty" for r in results):
            raise NoDataError(
                f"no rows for {', '.join(names)} in [{start:%Y-%m-%d}, {end:%Y-%m-%d}); "
                "choose a window the source data covers"
            )
        return results

    def _load(self, source: str, start: datetime, end: datetime) -> pd.DataFrame:
        assert self.loader is not None
        try:
            frame = self.loader.load(source, start, end)
        except ProdguardError:
            raise
        except Exception as exc:  # noqa: BLE001 - a project's own code
            raise DataSourceError(
                f"the project loader failed on '{source}': {type(exc).__name__}: "
                f"{first_line(exc, 200)}"
            ) from None
        if not isinstance(frame, pd.DataFrame):
            raise DataSourceError(f"the project loader returned no DataFrame for '{source}'")
        return frame

    def ingest_file(
        self, source: str, path: Path, frame: pd.DataFrame | None = None
    ) -> BatchResult:
        """Ingest one batch file (parquet or CSV) for ``source`` (``frame``: already read)."""
        if source not in self.settings.sources:
            raise InputError(
                f"unknown source '{source}'; configured: {sorted(self.settings.sources)}"
            )
        if frame is None:
            frame = read_batch_file(path)
        return self.ingest_frame(source, frame, label=f"file-{_slug(path.stem)}")

    def ingest_frame(
        self,
        source: str,
        frame: pd.DataFrame,
        start: datetime | None = None,
        end: datetime | None = None,
        label: str | None = None,
    ) -> BatchResult:
        began = time.perf_counter()
        config = self.settings.sources[source]
        suite = self.suite(source)
        window: dict[str, Any] = {
            "start": start.isoformat() if start else None,
            "end": end.isoformat() if end else None,
        }
        if label is None:
            label = f"{start:%Y%m%d}-{end:%Y%m%d}" if start and end else "batch"
        try:
            batch_id = f"{label}-{frame_digest(frame)[:10]}"
        except TypeError:
            raise InputError(
                f"{source} batch has a column of lists or objects; flatten it to scalars"
            ) from None
        if frame.empty:
            result = BatchResult(source, batch_id, "empty", 0, **window)
            self._log(result)
            return result

        frame = _normalise_timestamp(frame, config.timestamp, source)
        current = schema_of(frame)
        recorded = self.schemas.get(source)
        change: SchemaDiff | None = None
        if recorded is not None:
            change = diff(recorded, current)
            if change.changed:
                self._alert_schema_change(source, batch_id, recorded.fingerprint, current, change)
        else:
            missing = [c for c in [config.timestamp, *config.keys] if c not in frame.columns]
            if missing:
                raise InputError(
                    f"{source} batch lacks key/timestamp column(s) {missing}; "
                    "fix the source or sources.{source}.keys"
                )

        checked = time.perf_counter()
        report = self.validator.validate(frame, suite)
        validation_seconds = time.perf_counter() - checked
        schema_note = change.describe() if change is not None and change.changed else None

        if not report.success or (change is not None and change.breaking):
            result = self._quarantine(
                source, batch_id, frame, report, change, window, validation_seconds, began
            )
        else:
            columns = list(recorded.as_dict()) if recorded is not None else list(frame.columns)
            written = self.store.write(
                source, frame[columns], keys=config.keys, timestamp=config.timestamp
            )
            if recorded is None:
                self.schemas.record(source, current, self.clock.now())
            result = BatchResult(
                source,
                batch_id,
                "written",
                len(frame),
                **window,
                rows_added=written.rows_added,
                rows_replaced=written.rows_replaced,
                schema_change=schema_note,
                validation_seconds=validation_seconds,
                seconds=time.perf_counter() - began,
                details={
                    "rows_total": written.rows_total,
                    "suite_digest": suite.digest,
                    "static": config.static,
                },
            )
        self._log(result)
        return result

    def history(self) -> list[dict[str, Any]]:
        return self.ledger.records()

    def _quarantine(
        self,
        source: str,
        batch_id: str,
        frame: pd.DataFrame,
        report: ValidationReport,
        change: SchemaDiff | None,
        window: dict[str, Any],
        validation_seconds: float,
        began: float,
    ) -> BatchResult:
        failures = tuple(o.describe() for o in report.failures)
        reasons = []
        if change is not None and change.breaking:
            reasons.append(f"schema change: {change.describe()}")
        if not report.success:
            reasons.append(f"failed {len(report.failures)} of {report.evaluated} expectations")
        now = self.clock.now()
        record = {
            "source": source,
            "batch_id": batch_id,
            "rows": len(frame),
            "quarantined_at": now.isoformat(),
            "reasons": reasons,
            "failures": list(failures),
            "suite": report.suite,
            "suite_digest": report.suite_digest,
            **window,
        }
        placed = self.quarantine.put(source, batch_id, frame, record, report.raw)
        self.alerter.send(
            Alert(
                type="quarantine",
                severity="critical",
                source=source,
                message=(
                    f"{source} batch {batch_id} quarantined ({'; '.join(reasons)}); "
                    f"not written to the store; inspect {placed.path}"
                ),
                time=now,
                details={
                    "batch_id": batch_id,
                    "rows": len(frame),
                    "failures": list(failures),
                    "path": str(placed.path),
                },
            )
        )
        return BatchResult(
            source,
            batch_id,
            "quarantined",
            len(frame),
            **window,
            failures=failures,
            schema_change=change.describe() if change is not None and change.changed else None,
            quarantine_path=str(placed.path),
            validation_seconds=validation_seconds,
            seconds=time.perf_counter() - began,
        )

    def _alert_schema_change(
        self, source: str, batch_id: str, recorded_fp: str, current: Any, change: SchemaDiff
    ) -> None:
        self.alerter.send(
            Alert(
                type="schema_change",
                severity="critical" if change.breaking else "warning",
                source=source,
                message=f"{source} schema changed in batch {batch_id}: {change.describe()}",
                time=self.clock.now(),
                details={
                    "batch_id": batch_id,
                    "recorded_fingerprint": recorded_fp,
                    "fingerprint": current.fingerprint,
                    "removed": list(change.removed),
                    "added": list(change.added),
                    "renamed": [list(p) for p in change.renamed],
                    "retyped": [list(t) for t in change.retyped],
                },
            )
        )

    def _log(self, result: BatchResult) -> None:
        self.ledger.append({"logged_at": self.clock.now().isoformat(), **result.to_json()})


def read_batch_file(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise InputError(f"batch file {path} not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if suffix == ".csv":
            return pd.read_csv(path)
    except Exception as exc:  # noqa: BLE001 - parsers raise many types
        raise InputError(
            f"batch file {path.name} cannot be parsed as {suffix[1:]} ({type(exc).__name__})"
        ) from None
    raise InputError(f"batch file {path.name}: unsupported format; use .parquet or .csv")


def _normalise_timestamp(frame: pd.DataFrame, column: str, source: str) -> pd.DataFrame:
    if column not in frame.columns:
        return frame
    values = frame[column]
    if pd.api.types.is_datetime64_any_dtype(values):
        if getattr(values.dt, "tz", None) is None:
            values = values.dt.tz_localize("UTC")
        else:
            values = values.dt.tz_convert("UTC")
    else:
        try:
            values = pd.to_datetime(values, utc=True, format="ISO8601")
        except (ValueError, TypeError):
            raise InputError(
                f"{source} batch: column '{column}' holds values that are not ISO-8601 timestamps"
            ) from None
    frame = frame.copy()
    frame[column] = values.astype("datetime64[ns, UTC]")
    return frame


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)[:40]
