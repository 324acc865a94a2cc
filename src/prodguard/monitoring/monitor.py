"""Windowed monitors over the shared prediction log (every replica's traffic, seen as one).

Each window is split by model version (a promotion mid-window gives two reports) and compared
with that version's references: its training feature bins and its staging baseline. A window
too small to judge reports ``insufficient_data``; a version whose references cannot be read, or
a monitor that fails, reports ``inconclusive`` with the reason — never "no drift".
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any

import pandas as pd

from prodguard.clock import Clock
from prodguard.config import MonitoringSettings
from prodguard.errors import ProdguardError
from prodguard.monitoring.aggregates import (
    ERRORS_ROLE,
    AggregateReader,
    Moments,
    Slow,
    Summary,
    merge_all,
)
from prodguard.monitoring.baseline import Baseline, Finding, Status, evaluate, worst
from prodguard.monitoring.measures import (
    BINARY,
    FeatureReference,
    bins_fingerprint,
    feature_references,
    judged_features,
    kpi_cost_function,
    measure,
    served_degraded,
    summarise,
    summarise_all_pairs,
    window_bins,
)
from prodguard.monitoring.windows import Window, WindowSpec, latest_window, tile
from prodguard.registry import lineage
from prodguard.registry.ports import VersionReader
from prodguard.rollout.sequential import MeanState, RateState
from prodguard.serving.prediction_log import ANSWERS, ErrorKind, PredictionLog, Roles
from prodguard.tasks import Task, TaskSpec, spec_from_tags

_log = logging.getLogger("prodguard.monitoring")
REFERENCE_TTL_S = 60.0


@dataclass(frozen=True)
class VersionReference:
    features: dict[str, FeatureReference]
    baseline: Baseline | None
    spec: TaskSpec = BINARY  # the version's task

    @cached_property
    def bins(self) -> dict[str, FeatureReference]:
        """Every bin a window summary of this version counts on: the training features', the
        staging features' and the staging scores' (``measures.window_bins``)."""
        baseline = self.baseline
        return window_bins(
            self.features,
            baseline.score_reference() if baseline is not None else None,
            baseline.feature_references() if baseline is not None else None,
        )


def version_bins(reference: VersionReference) -> dict[str, FeatureReference]:
    return reference.bins


def read_version_reference(registry: VersionReader, version: int) -> VersionReference:
    """A version's training feature bins and (if recorded) its staging baseline."""
    stats = registry.load_json_artifact(version, lineage.REFERENCE_STATS_JSON)
    baseline = None
    tags = registry.version(version).tags
    if lineage.BASELINE in tags:
        baseline = Baseline.from_json(registry.load_json_artifact(version, lineage.BASELINE_JSON))
    return VersionReference(feature_references(stats), baseline, spec_from_tags(tags))


@dataclass(frozen=True)
class WindowReport:
    start: datetime
    end: datetime
    model_version: int | None
    rows: int
    status: Status
    findings: list[Finding] = field(default_factory=list)
    reason: str = ""
    sampled_every: int = 1

    @property
    def window(self) -> str:
        return f"{self.start.isoformat()}..{self.end.isoformat()}"

    def finding(self, metric: str) -> Finding | None:
        return next((f for f in self.findings if f.metric == metric), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "model_version": self.model_version,
            "rows": self.rows,
            "status": self.status,
            "reason": self.reason,
            "sampled_every": self.sampled_every,
            "findings": [f.to_json() for f in self.findings],
        }


@dataclass(frozen=True)
class PairedStates:
    """A version's live traffic as additive test states: paired differences against a
    reference version on the same requests (``reference`` None: no paired rows, the score and
    cost states then hold the version's own values), and its own error, latency and degraded
    rates. ``degraded_features`` counts the degraded rows per feature (from the rows' flags).

    ``classes`` (multiclass): per class score metric (``score.proba.<class>``, or
    ``score.share.<class>`` when no probabilities were logged), the paired differences of the
    rows' values (or the version's own values, unpaired).

    ``slow_pairs``: on the paired single-row requests, the version's and the reference's
    requests slower than the latency budget (see ``paired_slow``). ``failures``:
    the version's and the reference's failed requests among their requests over the same span,
    when both answered callers in it (a shadow answers no caller: its failures are not logged).
    """

    version: int
    reference: int | None
    rows: int
    score: MeanState
    cost: MeanState
    errors: RateState
    slow: RateState
    degraded: RateState
    degraded_features: dict[str, int] = field(default_factory=dict)
    slow_pairs: tuple[RateState, RateState] | None = None
    failures: tuple[RateState, RateState] | None = None
    classes: dict[str, MeanState] = field(default_factory=dict)  # multiclass: see class_scores

    @property
    def paired(self) -> bool:
        return self.reference is not None


class Monitor:
    def __init__(
        self,
        log: PredictionLog,
        references: Callable[[int], VersionReference],
        settings: MonitoringSettings,
        clock: Clock,
        aggregates: AggregateReader | None = None,
        latency_budget_ms: float | None = None,
    ) -> None:
        """``aggregates``: time windows are measured from the window summaries where they
        cover the window (the raw log for the rest of it), not from rows; the log's parts are
        summarised as replicas do, counting requests over ``latency_budget_ms``."""
        self._log = log
        self._references = references
        self._settings = settings
        self._spec = WindowSpec.from_settings(settings.window)
        self._clock = clock
        self._cache: dict[int, tuple[float, VersionReference]] = {}
        self._cost = kpi_cost_function(settings.kpi)
        self._aggregates = aggregates if self._spec.minutes is not None else None
        self._budget = latency_budget_ms
        self.windows_from_aggregates = 0  # windows measured from aggregates (tests, benchmarks)
        self.pairs_from_aggregates = False  # the last paired states read aggregates

    @property
    def spec(self) -> WindowSpec:
        return self._spec

    def now(self) -> datetime:
        return self._clock.now()

    def latest(self) -> list[WindowReport]:
        """The window ending now; its KPI from the window that matured most recently."""
        now = self._clock.now()
        maturity = timedelta(hours=self._settings.kpi.maturity_hours)
        reports = self._latest_reports(now, matured=maturity.total_seconds() == 0)
        if maturity.total_seconds() > 0:
            matured = self._latest_reports(now - maturity, matured=True)
            label = f"{matured[0].start.isoformat()}..{matured[0].end.isoformat()}"
            kpi = f"kpi.{self._settings.kpi.name}"
            by_version = {r.model_version: r.finding(kpi) for r in matured}
            reports = [_with_kpi(r, by_version.get(r.model_version), kpi, label) for r in reports]
        return reports

    def over(self, start: datetime, end: datetime) -> list[WindowReport]:
        """Consecutive closed windows of ``[start, end)`` (a backfill, or a replay's study)."""
        if end <= start:
            raise ProdguardError("the monitoring range is empty; --end must be after --start")
        maturity = timedelta(hours=self._settings.kpi.maturity_hours)
        now = self._clock.now()
        reports: list[WindowReport] = []
        if self._aggregates is not None and self._spec.minutes is not None:
            for low, high in self._time_windows(start, end):
                matured = high + maturity <= now
                summed = self._summaries(low, high)
                if summed is not None:
                    reports.extend(self._judge_summed(*summed, matured))
                    continue
                every = self._every(low, high, ANSWERS) if self._spec.rows is None else 1
                window = Window(low, high, self._log.window(low, high, role=ANSWERS, every=every))
                reports.extend(self._judge(window, every, matured))
            return reports
        for window, every in self._windows(start, end):
            reports.extend(self._judge(window, every, matured=window.end + maturity <= now))
        return reports

    def _latest_reports(self, now: datetime, matured: bool) -> list[WindowReport]:
        if self._aggregates is not None and self._spec.minutes is not None:
            start = now - timedelta(minutes=self._spec.minutes)
            summed = self._summaries(start, now)
            if summed is not None:
                return self._judge_summed(*summed, matured)
        window, every = self._read_latest(now)
        return self._judge(window, every, matured)

    def _time_windows(self, start: datetime, end: datetime) -> Iterator[tuple[datetime, datetime]]:
        assert self._spec.minutes is not None
        length = timedelta(minutes=self._spec.minutes)
        step = timedelta(minutes=self._spec.step_minutes or self._spec.minutes)
        low = start
        while low + length <= end:
            yield low, low + length
            low += step

    def _summaries(
        self, start: datetime, end: datetime
    ) -> tuple[datetime, datetime, dict[int, Summary], dict[ErrorKind, int]] | None:
        """The answers of ``[start, end)`` summarised per version, with the request errors and
        the span measured: the aggregates' whole buckets merged, the edges they do not hold
        (the window's partial buckets, what replicas have not flushed yet) summarised from the
        raw log — or left out when they hold more than ``aggregates.edge_rows`` rows (the
        span is then the whole buckets). None — read the window's rows — when the aggregates
        do not cover it, or summaries were taken on other reference bins."""
        assert self._aggregates is not None
        low, high = self._aggregates.span(start, end)
        if low >= high:
            return None
        edges = self._edges(start, low, high, end, ANSWERS)
        measured = (start, end) if edges or (start, end) == (low, high) else (low, high)
        parts: dict[int, list[Summary]] = {}
        errors: Counter[str] = Counter()
        for key, summary in self._aggregates.read(low, high).items():
            errors.update(summary.errors)
            if key.role in ANSWERS:
                parts.setdefault(key.version, []).append(summary)
        for a, b in edges:
            errors.update(self._log.errors(a, b))
            frame = self._log.window(a, b, role=ANSWERS)
            for version, rows in frame.groupby("version", sort=True) if len(frame) else ():
                parts.setdefault(int(version), []).append(self._summarise(int(version), rows))
        summed: dict[int, Summary] = {}
        try:
            for version, summaries in parts.items():
                merged = merge_all(summaries)
                if not merged.rows:
                    continue  # feedback or pairs only
                wanted = bins_fingerprint(self.reference(version).bins)
                if merged.fingerprint != wanted:
                    return None
                summed[version] = merged
        except ProdguardError:
            return None  # other bins, or unreadable references: the rows say why
        self.windows_from_aggregates += 1
        return (*measured, summed, {"rejected": errors["rejected"], "failed": errors["failed"]})

    def _edges(
        self, start: datetime, low: datetime, high: datetime, end: datetime, roles: Roles
    ) -> list[tuple[datetime, datetime]]:
        """The parts of ``[start, end)`` outside the aggregates' span ``[low, high)``, read from
        rows; none when they hold more than ``aggregates.edge_rows`` rows (high traffic: the
        whole buckets alone are measured, not a sample of the rows)."""
        edges = [(a, b) for a, b in ((start, low), (high, end)) if a < b]
        rows = sum(self._log.count(a, b, role=roles) for a, b in edges)
        return edges if rows <= self._settings.aggregates.edge_rows else []

    def _summarise(self, version: int, rows: pd.DataFrame) -> Summary:
        reference = self.reference(version)
        return summarise(
            rows,
            reference.bins,
            reference.spec,
            kpi=self._settings.kpi,
            cost=self._cost,
            latency_budget_ms=self._budget,
        )

    def _judge_summed(
        self,
        start: datetime,
        end: datetime,
        summed: Mapping[int, Summary],
        errors: Mapping[ErrorKind, int],
        matured: bool,
    ) -> list[WindowReport]:
        """The reports of a window from its summaries (as ``_judge`` from its rows)."""
        if not summed:
            return [
                WindowReport(
                    start, end, None, 0, "insufficient_data", reason="no predictions in the window"
                )
            ]
        reports = []
        for version, summary in sorted(summed.items()):
            try:
                reports.append(
                    self._version_report(
                        start,
                        end,
                        version,
                        summary,
                        errors,
                        1,
                        matured,
                        self._spec.min_rows,
                        any_size=False,
                    )
                )
            except Exception as exc:  # noqa: BLE001 - a failing monitor is inconclusive
                _log.exception("monitor failed on window %s..%s", start, end)
                reason = f"monitor failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                reports.append(
                    WindowReport(start, end, version, summary.rows, "inconclusive", reason=reason)
                )
        return reports

    def _windows(self, start: datetime, end: datetime) -> Iterator[tuple[Window, int]]:
        """The closed windows of ``[start, end)`` with their sampling rates, holding at most
        ``max_rows`` log rows at a time: the range in one read when it is that small (or the
        windows are counted in rows only), else one read per time window, sampled in SQL to
        ``max_rows`` by its own count."""
        spec = self._spec
        count = self._log.count(start, end, role=ANSWERS)
        if count <= spec.max_rows or spec.minutes is None:
            every = max(1, math.ceil(count / spec.max_rows))
            frame = self._log.window(start, end, role=ANSWERS, every=every)
            for window in tile(spec, frame, start, end):
                yield window, every
            return
        length = timedelta(minutes=spec.minutes)
        step = timedelta(minutes=spec.step_minutes or spec.minutes)
        low = start
        while low + length <= end:
            high = low + length
            every = self._every(low, high, ANSWERS) if spec.rows is None else 1
            frame = self._log.window(low, high, role=ANSWERS, every=every)
            for window in tile(spec, frame, low, high):
                yield window, every
            low += step

    def _every(self, start: datetime, end: datetime, roles: Roles) -> int:
        """The sampling rate that keeps a read of ``[start, end)`` within ``max_rows``."""
        return max(1, math.ceil(self._log.count(start, end, role=roles) / self._spec.max_rows))

    def _read_latest(self, now: datetime) -> tuple[Window, int]:
        spec = self._spec
        if spec.minutes is None:
            frame = self._log.tail(spec.rows or 0, before=now, role=ANSWERS)
            return latest_window(spec, frame, now), 1
        start = now - timedelta(minutes=spec.minutes)
        count = self._log.count(start, now, role=ANSWERS)
        every = max(1, math.ceil(count / spec.max_rows)) if spec.rows is None else 1
        frame = self._log.window(start, now, role=ANSWERS, every=every)
        return latest_window(spec, frame, now), every

    def judge(
        self,
        start: datetime,
        end: datetime,
        version: int,
        matured: bool,
        min_rows: int,
        roles: Roles = ANSWERS,
    ) -> WindowReport:
        """One version's predictions in ``[start, end)`` judged as one window (the guard: a
        version's traffic since it went live; ``roles`` ``shadow`` for a shadow rollout), with
        its own minimum of rows."""
        every = self._every(start, end, roles)  # sampled like the monitor's windows
        frame = self._log.window(start, end, role=roles, every=every)
        frame = frame[frame["version"] == version]
        reports = self._judge(Window(start, end, frame), every, matured, min_rows)
        found = [r for r in reports if r.model_version in (version, None)]
        return found[0]

    def paired(
        self,
        start: datetime,
        end: datetime,
        version: int,
        reference: int | None,
        roles: Roles,
        reference_roles: Roles,
        latency_budget_ms: float,
        min_pairs: int = 1,
        recent: datetime | None = None,
    ) -> PairedStates:
        """The version's rows (``roles``) in ``[start, end)`` paired on request id with the
        reference's rows of the same requests (an answer and a shadow score of it: the
        standby's shadow rows, the champion's shadow scores beside a canary, the champion's
        answers beside a shadow rollout): score differences (version minus reference) and, on
        labelled requests served healthy, cost differences, and slow requests of each
        (``slow_pairs``); the version's and the reference's failures over the whole span when
        both answered callers in it (``failures``, when ``reference_roles`` answer). Fewer than
        ``min_pairs`` pairs (or no reference): the version's own scores and costs, unpaired.
        The version's own failures and slow requests (``errors``, ``slow``: the unpaired tests
        against budgets) count from ``recent`` on when given: the service as it is now, not
        diluted by a long healthy past. Not sampled: read from the window aggregates' whole
        buckets where they hold the span (with the same latency budget), the rest from rows."""
        since = max(start, recent) if recent is not None else start
        self.pairs_from_aggregates = False
        parts: list[Part] = []
        for low, high in ((start, since), (since, end)):
            if low < high:
                parts += self._parts(low, high, {version, reference} - {None}, latency_budget_ms)
        answering = reference is not None and bool(role_names(reference_roles) & set(ANSWERS))
        return fold_states(
            parts,
            version,
            reference,
            role_names(roles),
            since,
            min_pairs,
            reference_answers=answering,
            spec=self.reference(version).spec,
        )

    def _parts(
        self, start: datetime, end: datetime, versions: set[int | None], budget_ms: float
    ) -> list[Part]:
        """The summaries of ``[start, end)`` with their pairs and errors: the aggregates' whole
        buckets, and the rest of the span (all of it without aggregates) from the raw log."""
        parts: list[Part] = []
        edges = [(start, end)]
        if self._aggregates is not None and budget_ms == self._budget:
            low, high = self._aggregates.span(start, end)
            if low < high:
                edges = self._edges(start, low, high, end, None)
                self.pairs_from_aggregates = True
                for key, summary in self._aggregates.read(low, high).items():
                    if key.version in versions:
                        parts.append(Part(key.bucket, key.version, key.role, summary))
        for a, b in edges:
            frame = self._log.window(a, b)
            frame = frame[frame["version"].isin(versions)] if len(frame) else frame
            for (version, role), rows in frame.groupby(["version", "role"]) if len(frame) else ():
                spec = self.reference(int(version)).spec
                summary = summarise(
                    rows,
                    {},
                    spec,
                    kpi=self._settings.kpi,
                    cost=self._cost,
                    latency_budget_ms=budget_ms,
                    features=False,
                )
                parts.append(Part(a, int(version), str(role), summary))
            # pairs summarised per hour: the clusters of the KPI's test (see _by_hour)
            hours = pd.to_datetime(frame["time"], utc=True).dt.floor("h") if len(frame) else []
            pairs = summarise_all_pairs(
                frame.assign(hour=hours),
                ["version", "role", "hour"],
                lambda v: self.reference(v).spec,
                kpi=self._settings.kpi,
                cost=self._cost,
                latency_budget_ms=budget_ms,
            )
            parts += [
                Part(max(a, hour.to_pydatetime()), int(v), str(r), summary)
                for (v, r, hour), summary in pairs.items()
            ]
            for version in versions:
                assert version is not None
                failed = self._log.errors(a, b, version)
                errors = {str(kind): n for kind, n in failed.items()}
                parts.append(Part(a, version, ERRORS_ROLE, Summary(errors=errors)))
        return parts

    def degraded(
        self, start: datetime, end: datetime, min_rows: int = 0, oldest: datetime | None = None
    ) -> tuple[RateState, dict[str, int]]:
        """Answers in ``[start, end)`` with degraded features (a data incident's footprint), and
        the degraded rows per feature; fewer than ``min_rows`` there (a quiet hour): the last
        ``min_rows`` answers before ``end``, none older than ``oldest``. From the window
        aggregates' whole buckets where they hold the span, the rest from rows."""
        if self._aggregates is not None:
            low, high = self._aggregates.span(start, end)
            if low < high:
                summaries = [
                    s for k, s in self._aggregates.read(low, high).items() if k.role in ANSWERS
                ]
                edges = self._edges(start, low, high, end, ANSWERS)
                frames = [self._log.window(a, b, role=ANSWERS) for a, b in edges]
                state, features = degraded_rows(pd.concat(frames) if frames else pd.DataFrame())
                rows = state.n + sum(s.rows for s in summaries)
                if rows >= min_rows or oldest is None:
                    counted: Counter[str] = Counter(features)
                    for summary in summaries:
                        counted.update(summary.degraded_features)
                    degraded = state.events + sum(s.degraded for s in summaries)
                    return RateState(rows, degraded), dict(counted)
        frame = self._log.window(start, end, role=ANSWERS)
        if len(frame) < min_rows and oldest is not None:
            tail = self._log.tail(min_rows, end, role=ANSWERS)
            frame = tail[pd.to_datetime(tail["time"], utc=True) >= pd.Timestamp(oldest)]
        return degraded_rows(frame)

    def _judge(
        self, window: Window, every: int, matured: bool, min_rows: int | None = None
    ) -> list[WindowReport]:
        try:
            return self._judge_versions(window, every, matured, min_rows)
        except Exception as exc:  # noqa: BLE001 - a failing monitor is inconclusive, not quiet
            _log.exception("monitor failed on window %s", window.label)
            reason = f"monitor failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            return [
                WindowReport(
                    window.start,
                    window.end,
                    None,
                    len(window.frame),
                    "inconclusive",
                    reason=reason,
                    sampled_every=every,
                )
            ]

    def _judge_versions(
        self, window: Window, every: int, matured: bool, min_rows: int | None
    ) -> list[WindowReport]:
        """``min_rows`` given: a version's live traffic of any length (the guard), judged with
        that minimum and the baseline whatever its window size."""
        needed = min_rows or self._spec.min_rows
        frame = window.frame
        errors = self._log.errors(window.start, window.end)
        if frame.empty:
            return [
                WindowReport(
                    window.start,
                    window.end,
                    None,
                    0,
                    "insufficient_data",
                    reason="no predictions in the window",
                    sampled_every=every,
                )
            ]
        reports = []
        for version, rows in frame.groupby("version", sort=True):
            reports.append(
                self._version_report(
                    window.start,
                    window.end,
                    int(version),
                    rows,
                    errors,
                    every,
                    matured,
                    needed,
                    any_size=min_rows is not None,
                )
            )
        return reports

    def _version_report(
        self,
        start: datetime,
        end: datetime,
        version: int,
        rows: pd.DataFrame | Summary,
        errors: Mapping[ErrorKind, int],
        every: int,
        matured: bool,
        needed: int,
        any_size: bool,
    ) -> WindowReport:
        """One version's report of a window, from its rows or from their summary."""
        counted = (rows.rows if isinstance(rows, Summary) else len(rows)) * every
        try:
            reference = self.reference(version)
        except ProdguardError as exc:
            return WindowReport(
                start,
                end,
                version,
                counted // every,
                "inconclusive",
                reason=f"references of v{version} unreadable: {exc}",
                sampled_every=every,
            )
        findings = self._findings(rows, reference, errors, matured, every, needed, any_size)
        short = counted < needed
        status = "insufficient_data" if short else worst(findings)
        reason = f"{counted} predictions, {needed} needed" if short else ""
        if status == "inconclusive":  # e.g. features logged as nulls only: say which
            unjudged = [f"{f.metric} ({f.reason})" for f in findings if f.status == status]
            more = f" and {len(unjudged) - 5} more" if len(unjudged) > 5 else ""
            reason = f"could not judge {', '.join(unjudged[:5])}{more}"
        return WindowReport(
            start, end, version, counted, status, findings, reason, sampled_every=every
        )

    def _findings(
        self,
        rows: pd.DataFrame | Summary,
        reference: VersionReference,
        errors: Mapping[ErrorKind, int],
        matured: bool,
        every: int,
        min_rows: int,
        any_size: bool,
    ) -> list[Finding]:
        baseline = reference.baseline
        reason = ""
        if baseline is not None and not any_size and not self._spec.same_size(baseline.window):
            reason = (
                f"baseline windows ({baseline.window}) differ from the monitor's "
                f"({self._spec.describe()}); re-run `prodguard baseline`"
            )
            baseline = None
        calendar, minutes = self._settings.calendar_features, self._spec.minutes
        features = judged_features(reference.features, calendar, minutes) or {}
        scores = baseline.score_reference() if baseline is not None else None
        staging = judged_features(
            baseline.feature_references() if baseline is not None else None, calendar, minutes
        )
        kpi = self._settings.kpi
        sampled_errors = {k: v // every for k, v in errors.items()}
        measures = measure(
            rows,  # the window's rows, or its merged summary (window aggregates)
            features=features,
            scores=scores,
            staging=staging,
            kpi=kpi,
            matured=matured,
            errors=sampled_errors,
            min_rows=max(1, min_rows // every),
            spec=reference.spec,
            cost=self._cost,
        )
        findings = evaluate(measures, baseline, self._settings.psi, self._settings.spread)
        if reason:
            findings = [
                f
                if f.status != "no_baseline"
                else Finding(f.metric, f.value, "no_baseline", reason=reason)
                for f in findings
            ]
        return findings

    def reference(self, version: int) -> VersionReference:
        """The version's references, re-read after ``REFERENCE_TTL_S`` (a long-running monitor
        or guard picks up a baseline recorded meanwhile)."""
        found = self._cache.get(version)
        if found is None or time.monotonic() - found[0] > REFERENCE_TTL_S:
            found = (time.monotonic(), self._references(version))
            self._cache[version] = found
        return found[1]


def degraded_rows(frame: pd.DataFrame) -> tuple[RateState, dict[str, int]]:
    """Rows with a feature the feature store could not serve among ``frame``, and those rows
    per feature."""
    flags = frame["flags"].tolist() if len(frame) else []
    features: dict[str, int] = {}
    degraded = []
    for row in flags:
        names = served_degraded(row)
        degraded.append(bool(names))
        for name in names:
            features[name] = features.get(name, 0) + 1
    return RateState.of(degraded), features


@dataclass(frozen=True)
class Part:
    """A summary of one version's rows of one role (or its request errors: ``ERRORS_ROLE``)
    from ``time`` on: a window aggregate's bucket, or a span of the raw log."""

    time: datetime
    version: int
    role: str
    summary: Summary


def role_names(roles: Roles) -> frozenset[str]:
    """The roles a ``Roles`` selects (None: every role)."""
    if roles is None:
        return frozenset(("champion", "canary", "shadow"))
    return frozenset((roles,) if isinstance(roles, str) else roles)


def fold_states(
    parts: Sequence[Part],
    version: int,
    reference: int | None,
    roles: frozenset[str],
    since: datetime,
    min_pairs: int,
    reference_answers: bool,
    spec: TaskSpec,
) -> PairedStates:
    """The version's test states from the summaries of its span (``Monitor.paired``): its own
    rows of ``roles``, paired with ``reference`` when at least ``min_pairs`` of them are; its
    failures and slow requests from ``since`` on; both versions' failures over the span when
    both answered callers (``reference_answers``)."""
    mine = [p for p in parts if p.version == version and p.role in roles]
    recent = [p for p in mine if p.time >= since]
    failed = _failed(parts, version, since)
    rows = sum(p.summary.rows for p in mine)
    degraded_features: Counter[str] = Counter()
    for part in mine:
        degraded_features.update(part.summary.degraded_features)
    own = PairedStates(
        version,
        None,
        rows,
        _mean_state(p.summary.score for p in mine),
        _mean_state(p.summary.healthy_kpi for p in mine),
        RateState(sum(p.summary.rows for p in recent) + failed, failed),
        RateState(sum(p.summary.timed for p in recent), sum(p.summary.slow for p in recent)),
        RateState(rows, sum(p.summary.degraded for p in mine)),
        dict(degraded_features),
        classes=_own_classes([p.summary for p in mine], spec),
    )
    if reference is None or reference == version or not rows:
        return own
    pairs = _mean_state(p.summary.paired.get(reference, Moments()) for p in mine)
    counted = sum(p.summary.paired.get(reference, Moments()).count for p in mine)
    if not counted or counted < min_pairs:
        return own
    slow = Slow()
    classes: dict[str, MeanState] = {}
    for part in mine:
        slow = slow.add(part.summary.pair_slow.get(reference, Slow()))
        for metric, moments in part.summary.pair_classes.get(reference, {}).items():
            classes[metric] = classes.get(metric, MeanState()) + MeanState(*moments.sums())
    failures = None
    answered = sum(p.summary.rows for p in parts if p.version == reference and p.role in ANSWERS)
    if reference_answers and answered and any(p.role in ANSWERS for p in mine):
        everything = [p for p in parts if p.role == ERRORS_ROLE]
        mine_failed = sum(
            p.summary.errors.get("failed", 0) for p in everything if p.version == version
        )
        ref_failed = sum(
            p.summary.errors.get("failed", 0) for p in everything if p.version == reference
        )
        failures = (
            RateState(rows + mine_failed, mine_failed),
            RateState(answered + ref_failed, ref_failed),
        )
    return replace(
        own,
        reference=reference,
        score=pairs,
        cost=_by_hour((p.time, p.summary.pair_costs.get(reference, Moments())) for p in mine),
        slow_pairs=(
            (RateState(slow.timed, slow.mine), RateState(slow.timed, slow.other))
            if slow.timed
            else None
        ),
        failures=failures,
        classes=classes,
    )


def _failed(parts: Sequence[Part], version: int, since: datetime | None) -> int:
    """The version's failed requests among ``parts`` (from ``since`` on when given)."""
    return sum(
        p.summary.errors.get("failed", 0)
        for p in parts
        if p.version == version and p.role == ERRORS_ROLE and (since is None or p.time >= since)
    )


def _by_hour(parts: Iterable[tuple[datetime, Moments]]) -> MeanState:
    """The parts' observations as one state clustered by the hour each part began in (the
    requests of an hour share its conditions, its traffic, its incidents: a mean test then reads
    their cluster-robust spread, see ``MeanState.clustered_sd``)."""
    hours: dict[datetime, MeanState] = {}
    for began, moments in parts:
        hour = began.replace(minute=0, second=0, microsecond=0)
        hours[hour] = hours.get(hour, MeanState()) + MeanState(*moments.sums())
    return MeanState.of_clusters(hours.values())


def _mean_state(moments: Iterable[Moments]) -> MeanState:
    total = MeanState()
    for found in moments:
        total = total + MeanState(*found.sums())
    return total


def _own_classes(summaries: Sequence[Summary], spec: TaskSpec) -> dict[str, MeanState]:
    """A multiclass version's own class score states (``class_scores`` of its rows): its
    probabilities when any were logged, else its predicted shares. Empty for other tasks."""
    rows = sum(s.rows for s in summaries)
    if spec.task is not Task.MULTICLASS or not rows:
        return {}
    names = [str(c) for c in spec.classes]
    probabilities = [
        _mean_state(s.probabilities[j] for s in summaries if j < len(s.probabilities))
        for j in range(len(names))
    ]
    if any(state.n for state in probabilities):
        return {f"score.proba.{c}": state for c, state in zip(names, probabilities, strict=True)}
    shares = {}
    for j, c in enumerate(names):
        chosen = sum(int(s.decisions[j]) for s in summaries if j < len(s.decisions))
        shares[f"score.share.{c}"] = MeanState(rows, float(chosen), float(chosen))
    return shares


def _with_kpi(report: WindowReport, kpi: Finding | None, metric: str, label: str) -> WindowReport:
    """The report with its KPI taken from the matured window (or why there is none)."""
    if kpi is None:
        kpi = Finding(
            metric,
            None,
            "insufficient_data",
            reason=f"no matured predictions of this version in {label}",
        )
    else:
        kpi = Finding(**{**kpi.to_json(), "reason": (kpi.reason + f" (window {label})").strip()})
    return replace_finding(report, kpi)


def replace_finding(report: WindowReport, finding: Finding) -> WindowReport:
    """``report`` with the finding of the same metric replaced (e.g. a KPI judged on an older,
    matured window), its status recomputed unless the window itself could not be judged."""
    findings = [finding if f.metric == finding.metric else f for f in report.findings]
    judged = report.status in ("insufficient_data", "inconclusive") and not report.findings
    short = report.status == "insufficient_data" and bool(report.reason)
    return WindowReport(
        report.start,
        report.end,
        report.model_version,
        report.rows,
        report.status if judged or short else worst(findings),
        findings,
        report.reason,
        report.sampled_every,
    )
