"""Baselines taken in staging, and the thresholds they imply.

A baseline holds, per metric, its mean, standard deviation and **spread** across the staging
windows (same window size as production monitoring). The spread is the largest deviation from
the mean that staging showed, so "1.5x the spread" means half as far again as anything seen in
staging: a threshold of ``mean + 1.5 sd`` would, by construction, be crossed by about 7% of
in-distribution windows. It also holds the staging distribution of the scores (``score.psi``)
and of every feature (``shift.*``). Thresholds, per metric:

- features, ``psi.*`` (against training) and ``shift.*`` (against staging): warning when the
  PSI exceeds both the absolute band (0.1) and ``mean + 1.5 x spread`` of its staging values;
  critical above both 0.25 and ``mean + 2 x spread``. A feature that already moved between
  training and staging alerts only when it moves further; without a baseline the absolute
  bands alone apply (and only ``psi.*`` exists);
- every other baselined metric: warning beyond ``mean + 1.5 x spread``, critical beyond
  ``mean + 2 x spread``, in the direction that is worse (higher cost, latency, rates, score PSI;
  either way for the mean score). The spread is never below a floor per metric family (a
  staging period with zero errors must not make one error critical; latencies: 1 ms), nor below
  20% of the mean for PSI values (their sampling noise grows with them) and 10% for latencies,
  rates and KPIs. The standard deviation a finding reports has the same floor (never "± 0").

``score.shift_sd`` reports the mean score's deviation in baseline standard deviations (the
rollback trigger's "prediction shift > 3 sd"); for a multiclass model, the largest deviation
among its predicted-class shares.

A baseline also keeps the scores of a sample of its staging requests (``sample_keys``,
``score_sample``): the ``SAMPLE_SIZE`` requests whose keys hash lowest, so two versions
baselined on the same staging requests keep the same ones, and ``pair_spread`` measures how
much the two versions disagree request by request (what bounds the guard's declared shift
between them).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np

from prodguard.config import BandSettings
from prodguard.errors import RegistryError
from prodguard.monitoring.measures import FeatureReference, Measure, feature_references
from prodguard.monitoring.psi import NumericBins

Status = Literal["ok", "warning", "critical", "insufficient_data", "inconclusive", "no_baseline"]
UNMONITORED = frozenset({"rows"})
# the smallest spread a metric family is compared with (absolute units of the metric)
SPREAD_FLOOR = {
    "psi": 0.01,
    "shift": 0.01,
    "score": 0.005,
    "kpi": 0.005,
    "rate": 0.002,
    "latency": 1.0,  # ms: a staging replay's timer may read the same value in every window
}
# relative floors: latency jitters with load; a PSI's sampling noise grows with its value
RELATIVE_FLOOR = {
    "latency": 0.1,
    "rate": 0.1,
    "kpi": 0.1,
    "psi": 0.2,
    "shift": 0.2,
    "score.psi": 0.2,
}
SAMPLE_SIZE = 1000  # staging requests whose scores a baseline keeps (see pair_spread)
MIN_SAMPLE_PAIRS = 100  # shared sample requests below which two baselines are not compared


@dataclass(frozen=True)
class MetricBaseline:
    mean: float
    sd: float
    windows: int
    max_deviation: float  # the largest |value - mean| over the staging windows

    def floor(self, metric: str) -> float:
        """The smallest spread (and standard deviation) ``metric`` is judged with: its family's
        absolute floor or its relative floor times the mean, whichever is larger."""
        family = metric.split(".", 1)[0]
        relative = RELATIVE_FLOOR.get(metric, RELATIVE_FLOOR.get(family, 0.0))
        return max(relative * abs(self.mean), SPREAD_FLOOR.get(family, 0.0))

    def spread(self, metric: str) -> float:
        return max(self.max_deviation, self.floor(metric))

    def floored_sd(self, metric: str) -> float:
        """The standard deviation reported beside a finding: never below the floor, so a
        staging period that measured the same value in every window does not read "± 0"."""
        return max(self.sd, self.floor(metric))


@dataclass(frozen=True)
class Baseline:
    model_version: int
    start: str
    end: str
    window: dict[str, Any]
    metrics: dict[str, MetricBaseline]
    score_edges: list[float]
    score_fractions: list[float]
    rows: int
    created: str
    feature_stats: dict[str, dict[str, Any]] = field(default_factory=dict)  # staging features
    details: dict[str, Any] = field(default_factory=dict)
    # the scores of a sample of the staging requests (see score_sample): keys, and per score
    # metric ("score.mean", multiclass "score.proba.<class>") the values in the keys' order
    sample_keys: list[str] = field(default_factory=list)
    score_sample: dict[str, list[float]] = field(default_factory=dict)

    def score_reference(self) -> FeatureReference:
        return FeatureReference(
            NumericBins(np.asarray(self.score_edges)), np.asarray(self.score_fractions)
        )

    def feature_references(self) -> dict[str, FeatureReference]:
        return feature_references(self.feature_stats)

    def to_json(self) -> dict[str, Any]:
        document = {k: v for k, v in self.__dict__.items() if k != "metrics"}
        document["metrics"] = {name: m.__dict__ for name, m in self.metrics.items()}
        return document

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> Baseline:
        """Raises RegistryError for a document this version of prodguard cannot read."""
        try:
            metrics = {name: MetricBaseline(**m) for name, m in document["metrics"].items()}
            return cls(**{**document, "metrics": metrics})
        except (KeyError, TypeError, AttributeError):
            raise RegistryError(
                "the stored baseline has another format; re-run `prodguard baseline` for this "
                "version"
            ) from None


def score_sample(
    keys: Sequence[str], scores: Mapping[str, np.ndarray], size: int = SAMPLE_SIZE
) -> tuple[list[str], dict[str, list[float]]]:
    """The scores of the ``size`` requests whose keys hash lowest (a bottom-k sample: two
    versions baselined on the same requests keep the same keys, whatever else each logged).
    ``keys`` name the requests (the same key for the same request in every version's replay);
    a metric with a missing value among the sampled requests is left out."""
    ranks = np.fromiter(
        (int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest()) for k in keys),
        dtype="uint64",
        count=len(keys),
    )
    chosen = np.sort(np.argsort(ranks, kind="stable")[:size])
    sample = {}
    for metric, values in scores.items():
        picked = np.asarray(values, dtype="float64")[chosen]
        if np.isfinite(picked).all():
            sample[metric] = [float(v) for v in picked]
    return [keys[i] for i in chosen], sample


class PairSpread(NamedTuple):
    """Two versions' per-request score differences on the staging requests both sampled."""

    n: int
    mean: float
    sd: float


def pair_spread(own: Baseline, other: Baseline, metric: str) -> PairSpread | None:
    """How much two versions' ``metric`` differs request by request on the staging requests
    both baselines sampled; None when they share fewer than ``MIN_SAMPLE_PAIRS`` (baselined on
    other periods or requests) or one of them has no sample of the metric."""
    mine, theirs = own.score_sample.get(metric), other.score_sample.get(metric)
    if mine is None or theirs is None:
        return None
    where = {key: i for i, key in enumerate(other.sample_keys)}
    pairs = [
        (v, theirs[where[k]]) for k, v in zip(own.sample_keys, mine, strict=True) if k in where
    ]
    if len(pairs) < MIN_SAMPLE_PAIRS:
        return None
    differences = np.subtract(*np.asarray(pairs, dtype="float64").T)
    return PairSpread(len(pairs), float(differences.mean()), float(differences.std(ddof=1)))


def summarise(windows: Sequence[Sequence[Measure]]) -> dict[str, MetricBaseline]:
    """Mean, sample standard deviation and largest deviation of each metric over the windows
    that measured it."""
    values: dict[str, list[float]] = {}
    for measures in windows:
        for m in measures:
            if m.value is not None and m.metric not in UNMONITORED:
                values.setdefault(m.metric, []).append(m.value)
    summary = {}
    for name, found in values.items():
        array = np.asarray(found, dtype="float64")
        mean = float(array.mean())
        summary[name] = MetricBaseline(
            mean=mean,
            sd=float(array.std(ddof=1)) if array.size > 1 else 0.0,
            windows=int(array.size),
            max_deviation=float(np.abs(array - mean).max()),
        )
    return summary


@dataclass(frozen=True)
class Finding:
    metric: str
    value: float | None
    status: Status
    warning: float | None = None  # thresholds on the metric's own scale
    critical: float | None = None
    baseline_mean: float | None = None
    baseline_sd: float | None = None
    reason: str = ""

    @property
    def alerting(self) -> bool:
        return self.status in ("warning", "critical")

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def evaluate(
    measures: Sequence[Measure],
    baseline: Baseline | None,
    psi_bands: BandSettings,
    spread: BandSettings,
) -> list[Finding]:
    findings = []
    shifts: list[float] = []  # the score's moves in baseline sds (one per class: multiclass)
    for m in measures:
        if m.metric in UNMONITORED:
            findings.append(Finding(m.metric, m.value, "ok"))
            continue
        if m.value is None:
            status: Status = (
                "insufficient_data" if m.reason.startswith("insufficient") else "inconclusive"
            )
            if m.reason.startswith("not matured"):
                status = "insufficient_data"
            findings.append(Finding(m.metric, None, status, reason=m.reason))
            continue
        known = baseline.metrics.get(m.metric) if baseline is not None else None
        findings.append(_judge(m, known, psi_bands, spread))
        if known is not None and (m.metric == "score.mean" or m.metric.startswith("score.share.")):
            shifts.append((m.value - known.mean) / max(known.sd, SPREAD_FLOOR["score"] / 10))
    if shifts:
        shift = max(shifts, key=abs)
        findings.append(Finding("score.shift_sd", shift, "ok", baseline_mean=0.0, baseline_sd=1.0))
    return findings


def thresholds(
    metric: str, known: MetricBaseline | None, psi_bands: BandSettings, spread: BandSettings
) -> tuple[float, float] | None:
    """(warning, critical) on the metric's own scale; None for a non-feature without baseline."""
    feature = metric.startswith(("psi.", "shift."))
    if known is None:
        return (psi_bands.warning, psi_bands.critical) if feature else None
    width = known.spread(metric)
    warning = known.mean + spread.warning * width
    critical = known.mean + spread.critical * width
    if feature:
        return max(warning, psi_bands.warning), max(critical, psi_bands.critical)
    return warning, critical


def _judge(
    m: Measure, known: MetricBaseline | None, psi_bands: BandSettings, spread: BandSettings
) -> Finding:
    value = float(m.value)  # type: ignore[arg-type]
    bounds = thresholds(m.metric, known, psi_bands, spread)
    if bounds is None:
        return Finding(m.metric, value, "no_baseline", reason="no staging baseline")
    warning, critical = bounds
    mean, sd = (known.mean, known.floored_sd(m.metric)) if known is not None else (None, None)
    tested = value
    if known is not None and _two_sided(m.metric):  # either direction is a shift
        tested = known.mean + abs(value - known.mean)
    return Finding(m.metric, value, _band(tested, warning, critical), warning, critical, mean, sd)


def _two_sided(metric: str) -> bool:
    """The score's mean (binary, regression) and a multiclass model's class shares and mean
    probabilities: a move either way is a shift."""
    return metric == "score.mean" or metric.startswith(("score.share.", "score.proba."))


def _band(value: float, warning: float, critical: float) -> Status:
    if value > critical:
        return "critical"
    if value > warning:
        return "warning"
    return "ok"


def worst(findings: Sequence[Finding]) -> Status:
    """The window's status: its worst finding. A metric short of data (a KPI not matured yet)
    does not make the whole window insufficient; too few rows does (the monitor decides)."""
    order = ["ok", "no_baseline", "insufficient_data", "inconclusive", "warning", "critical"]
    found = [f.status for f in findings if f.status not in ("insufficient_data", "no_baseline")]
    return max(found, key=order.index, default="ok")
