"""Anytime-valid sequential decisions: confidence sequences the guard may look at as often as it
likes without inflating its error rate.

A *confidence sequence* (CS) at level ``alpha`` is a sequence of intervals ``CI_n`` (one per
sample size) that holds the true effect at every ``n`` **simultaneously** with probability at
least ``1 - alpha``: ``P(exists n: effect not in CI_n) <= alpha``. Every decision below is read
off one CS, so its error bound holds however often, and after however many batches, it is
checked, and whatever the checker does in between (optional stopping):

- ``fired``: the interval lies entirely beyond ``null_effect`` (in the direction that is worse,
  or on either side for a two-sided test) — the version is *not* as good as its reference.
  Probability of ever firing when the true effect is within ``null_effect``: at most ``alpha``.
- ``clean``: the interval lies entirely within ``min_effect`` — the version is at least as good
  as needed. Probability of ever being clean when the true effect is ``min_effect`` or worse: at
  most ``alpha``. A version shown to be worse by less than what matters is ``clean`` (clean is
  checked first).
- ``continue``: neither; the evidence says how many more observations would decide.

Two tests, both on additive state (sums that merge by addition and serialise to JSON, so
windows can be aggregated anywhere and combined later):

``MeanTest`` — the mean of observations such as paired differences (a version's score minus the
reference's score of the same request; its cost per labelled outcome minus the reference's on
the same request). Robbins' two-sided normal-mixture boundary (Howard, Ramdas, McAuliffe, Sekhon
2021, "Time-uniform, nonparametric, nonasymptotic confidence sequences", eq. 14)::

    |S_n - n mu| < sqrt((n s^2 + rho) * (log((n s^2 + rho) / rho) + 2 log(1 / alpha)))

with ``rho = n0 s^2`` tuned so the interval is narrowest near ``target_n`` observations.

- ``scale`` given (a known sub-Gaussian scale ``s``, e.g. ``(high - low) / 2`` for values
  known to lie in ``[low, high]``): **exact, non-asymptotic** — the coverage bound holds for
  every ``n`` when the observations' conditional means equal ``mu`` and their deviations are
  ``s``-sub-Gaussian given the past (independent or a martingale difference sequence).
- ``scale=None`` (default): ``s`` is the running sample standard deviation (floored at
  ``min_sd``) — the *asymptotic* confidence sequence of Waudby-Smith, Arbour, Sinha, Kennedy,
  Ramdas (2024, "Time-uniform central limit theory and asymptotic confidence sequences",
  Annals of Statistics): for independent observations with a finite ``2 + delta`` moment its
  time-uniform coverage error tends to ``alpha`` as the first look moves later. No decision is
  taken before ``min_n`` observations; the type-I error at small ``n`` is measured by simulation
  (``tests/unit/test_sequential.py``), not proven.

``RateTest`` — a rate (errors per request, requests slower than a latency budget) against a
known reference rate ``p0`` (a budget, or the reference's staging rate). Robbins' beta-binomial
mixture: for independent Bernoulli(p) observations, ``M_n(p) = B(a + k, b + n - k) / (B(a, b)
p^k (1 - p)^(n - k))`` is a nonnegative martingale with mean 1, so by Ville's inequality
``{p : M_n(p) < 1 / alpha}`` is an **exact** confidence sequence (any prior ``Beta(a, b)``
fixed in advance; it sets where the test is most sensitive). A p99 latency budget is the rate
test "share of requests slower than the budget <= 1 %".

``RateDifferenceTest`` — a version's rate minus its reference's over the same span (failed
requests of a canary and of the champion answering beside it): each rate's beta-binomial
confidence sequence at ``alpha / 2``, their difference's interval by a union bound; **exact**,
and on additive ``RateState`` pairs.

Not covered: dependence between observations beyond a martingale structure (e.g. many requests
of one entity sharing one cause are one observation's worth of evidence, not many), and
references that change while the test runs (start a new test when the reference changes).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import brentq, minimize_scalar
from scipy.special import betaln

Verdict = Literal["fired", "clean", "continue"]
Side = Literal["greater", "less", "two-sided"]
VERDICTS = np.array(["continue", "fired", "clean"])
MAX_N = 10**12  # "needs more than this": effectively never


@dataclass(frozen=True)
class MeanState:
    """Additive sufficient statistics of a sample: count, sum, sum of squares."""

    n: int = 0
    total: float = 0.0
    squares: float = 0.0
    # when the observations come in clusters that share a cause (the requests of one hour
    # share its conditions): the number of clusters and, over them, the sums of S_c^2, n_c S_c and
    # n_c^2 (n_c, S_c: a cluster's count and sum), additive like the rest (see of_clusters)
    clusters: int = 0
    cluster_squares: float = 0.0
    cluster_cross: float = 0.0
    cluster_sizes: float = 0.0

    @classmethod
    def of_clusters(cls, states: Iterable[MeanState]) -> MeanState:
        """The states merged, each one a cluster (its own cluster sums are replaced)."""
        merged = cls()
        for s in states:
            if s.n:
                merged = merged + cls(
                    s.n, s.total, s.squares, 1, s.total * s.total, s.n * s.total, float(s.n * s.n)
                )
        return merged

    @classmethod
    def of(cls, values: Iterable[float] | np.ndarray) -> MeanState:
        array = np.asarray(values, dtype="float64").ravel()
        array = array[np.isfinite(array)]
        return cls(int(array.size), float(array.sum()), float(np.square(array).sum()))

    def merge(self, other: MeanState) -> MeanState:
        return MeanState(
            self.n + other.n,
            self.total + other.total,
            self.squares + other.squares,
            self.clusters + other.clusters,
            self.cluster_squares + other.cluster_squares,
            self.cluster_cross + other.cluster_cross,
            self.cluster_sizes + other.cluster_sizes,
        )

    def __add__(self, other: MeanState) -> MeanState:
        return self.merge(other)

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else math.nan

    @property
    def sd(self) -> float:
        """Sample standard deviation (``n - 1`` in the denominator)."""
        return self._sd_of(self.squares)

    @property
    def test_sd(self) -> float:
        """The standard deviation a mean test reads: the larger of ``sd`` and ``clustered_sd``
        (the one ``test_squares`` carries)."""
        return self._sd_of(self.test_squares)

    def _sd_of(self, squares: float) -> float:
        if self.n < 2:
            return math.nan
        variance = (squares - self.total * self.total / self.n) / (self.n - 1)
        return math.sqrt(max(variance, 0.0))

    @property
    def clustered_sd(self) -> float:
        """The standard deviation that counts the clusters' dependence: sqrt(n) x the
        cluster-robust standard error of the mean (with the G / (G - 1) correction); NaN
        without at least 2 clusters."""
        if self.clusters < 2 or not self.n:
            return math.nan
        mean = self.total / self.n
        spread = self.cluster_squares - 2 * mean * self.cluster_cross
        spread += mean * mean * self.cluster_sizes
        correction = self.clusters / (self.clusters - 1)
        return math.sqrt(max(spread, 0.0) / self.n * correction)

    @property
    def test_squares(self) -> float:
        """The sum of squares a mean test reads: the sample's own, raised so that its standard
        deviation is at least ``clustered_sd`` (observations that share a cause carry less
        evidence than their number)."""
        sd = self.clustered_sd
        if self.n < 2 or not math.isfinite(sd):
            return self.squares
        return max(self.squares, self.total * self.total / self.n + (self.n - 1) * sd * sd)

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {"n": self.n, "total": self.total, "squares": self.squares}
        if self.clusters:
            document["clusters"] = [
                self.clusters,
                self.cluster_squares,
                self.cluster_cross,
                self.cluster_sizes,
            ]
        return document

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> MeanState:
        clusters = document.get("clusters") or (0, 0.0, 0.0, 0.0)
        return cls(
            int(document["n"]),
            float(document["total"]),
            float(document["squares"]),
            int(clusters[0]),
            *(float(v) for v in clusters[1:]),
        )


@dataclass(frozen=True)
class RateState:
    """Additive counts: events among trials."""

    n: int = 0
    events: int = 0

    @classmethod
    def of(cls, flags: Iterable[bool] | np.ndarray) -> RateState:
        array = np.asarray(flags, dtype=bool).ravel()
        return cls(int(array.size), int(array.sum()))

    def merge(self, other: RateState) -> RateState:
        return RateState(self.n + other.n, self.events + other.events)

    def __add__(self, other: RateState) -> RateState:
        return self.merge(other)

    @property
    def rate(self) -> float:
        return self.events / self.n if self.n else math.nan

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "events": self.events}

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> RateState:
        return cls(int(document["n"]), int(document["events"]))


@dataclass(frozen=True)
class Decision:
    """A sequential decision and its evidence."""

    verdict: Verdict
    estimate: float  # the effect (mean, or rate minus the reference rate); nan without data
    low: float  # the confidence sequence's interval at this n
    high: float
    n: int
    alpha: float
    null_effect: float
    min_effect: float
    more_needed: int | None  # observations still needed to decide at the minimum effect
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in self.__dict__.items()
        }

    def summary(self) -> str:
        interval = f"[{self.low:+.4g}, {self.high:+.4g}]"
        text = f"{self.verdict}: effect {self.estimate:+.4g} in {interval}"
        text += f" (n={self.n}, alpha={self.alpha:g})"
        if self.verdict == "continue" and self.more_needed is not None:
            text += f"; ~{self.more_needed} more to decide at {self.min_effect:g}"
        return text


def _check(alpha: float, null_effect: float, min_effect: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError("alpha must be in (0, 1)")
    if not min_effect > null_effect >= 0:
        raise ValueError("min_effect must be greater than null_effect, and null_effect >= 0")


def verdicts(
    low: ArrayLike,
    high: ArrayLike,
    side: Side,
    null_effect: float,
    min_effect: float,
    fired_first: bool = False,
) -> np.ndarray:
    """Decisions read off intervals of the (signed) effect, vectorised: ``clean`` when the
    interval lies within the minimum effect, else ``fired`` when it lies beyond the null
    effect (on the worse side), else ``continue``. ``fired_first``: an interval both within
    the minimum and beyond the null fires (each error bound holds either way)."""
    low, high = np.asarray(low, dtype="float64"), np.asarray(high, dtype="float64")
    if side == "less":  # lower is worse: mirror
        low, high = -high, -low
    if side == "two-sided":
        clean = (low > -min_effect) & (high < min_effect)
        fired = (low > null_effect) | (high < -null_effect)
    else:
        clean = high < min_effect
        fired = low > null_effect
    if fired_first:
        return VERDICTS[np.where(fired, 1, np.where(clean, 2, 0))]
    return VERDICTS[np.where(clean, 2, np.where(fired, 1, 0))]


def normal_mixture_radius(n: np.ndarray | float, n0: float, alpha: float) -> np.ndarray | float:
    """Half-width of the two-sided normal-mixture CS for a mean, in units of the scale ``s``:
    ``sqrt((n + n0) (log((n + n0) / n0) + 2 log(1/alpha))) / n`` (Howard et al. 2021, eq. 14
    with ``rho = n0 s^2``)."""
    n = np.asarray(n, dtype="float64")
    with np.errstate(divide="ignore", invalid="ignore"):
        radius = np.sqrt((n + n0) * (np.log1p(n / n0) + 2 * math.log(1 / alpha))) / n
    return np.where(n > 0, radius, np.inf)


def tuned_n0(target_n: float, alpha: float) -> float:
    """The mixture's ``rho / s^2`` that makes the interval narrowest at ``target_n``."""
    found = minimize_scalar(
        lambda log_n0: float(normal_mixture_radius(target_n, math.exp(log_n0), alpha)),
        bounds=(math.log(target_n) - 12, math.log(target_n) + 6),
        method="bounded",
    )
    return math.exp(found.x)


class MeanTest:
    """Anytime-valid test of a mean (see the module docstring for the guarantee).

    ``side``: ``greater`` (higher is worse, e.g. cost differences), ``less`` (lower is worse) or
    ``two-sided`` (either way, e.g. a prediction shift). ``null_effect``: the largest effect
    still "as good as the reference" (0: exactly as good). ``min_effect``: the smallest effect
    that matters, in the units of the observations (e.g. 3 baseline sd of the score, or 5 % of
    the baseline cost). ``target_n``: where the interval is tuned to be narrowest (about the
    sample size at which a decision is wanted). ``min_n``: no decision before (estimated scale
    only)."""

    def __init__(
        self,
        min_effect: float,
        *,
        alpha: float = 0.01,
        null_effect: float = 0.0,
        side: Side = "greater",
        scale: float | None = None,
        min_sd: float = 1e-9,
        target_n: float = 500,
        min_n: int = 100,
        fired_first: bool = False,
    ) -> None:
        _check(alpha, null_effect, min_effect)
        self.fired_first = fired_first
        if scale is not None and scale <= 0:
            raise ValueError("scale must be positive")
        self.min_effect, self.alpha, self.null_effect, self.side = (
            min_effect,
            alpha,
            null_effect,
            side,
        )
        self.scale, self.min_sd, self.min_n = scale, min_sd, min_n if scale is None else 1
        self.n0 = tuned_n0(target_n, alpha)

    def bounds(
        self, n: ArrayLike, total: ArrayLike, squares: ArrayLike
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Vectorised over states given as arrays of count, sum, sum of squares: (estimate,
        low, high) of the confidence sequence; an infinite interval where ``n`` is below the
        minimum (no decision yet)."""
        n = np.asarray(n, dtype="float64")
        total, squares = np.asarray(total, dtype="float64"), np.asarray(squares, dtype="float64")
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = total / n
            if self.scale is None:
                variance = (squares - total * mean) / (n - 1)
                scale = np.maximum(np.sqrt(np.maximum(variance, 0.0)), self.min_sd)
            else:
                scale = np.full_like(n, self.scale)
            radius = scale * normal_mixture_radius(n, self.n0, self.alpha)
        radius = np.where(n >= max(self.min_n, 1), radius, np.inf)
        return mean, mean - radius, mean + radius

    def verdicts(self, n: ArrayLike, total: ArrayLike, squares: ArrayLike) -> np.ndarray:
        _, low, high = self.bounds(n, total, squares)
        return verdicts(low, high, self.side, self.null_effect, self.min_effect, self.fired_first)

    def _scale(self, state: MeanState) -> float:
        if self.scale is not None:
            return self.scale
        sd = state.test_sd
        return max(sd if math.isfinite(sd) else 0.0, self.min_sd)

    def needed(self, state: MeanState) -> int:
        """The sample size at which the interval is narrow enough to decide whatever the true
        effect (its width at most ``min_effect - null_effect``; on one side of zero for a
        two-sided test), at the current scale."""
        width = self.min_effect - self.null_effect
        scale = self._scale(state)

        def too_wide(n: float) -> float:
            return 2 * scale * float(normal_mixture_radius(n, self.n0, self.alpha)) - width

        if too_wide(MAX_N) > 0:
            return MAX_N
        if too_wide(1) <= 0:
            return max(1, self.min_n)
        return max(math.ceil(brentq(too_wide, 1, MAX_N, xtol=0.5)), self.min_n)

    def decide(self, state: MeanState) -> Decision:
        found = self.bounds(state.n, state.total, state.test_squares)
        estimate, low, high = (float(v) for v in found)
        verdict = str(
            verdicts(low, high, self.side, self.null_effect, self.min_effect, self.fired_first)
        )
        reason = ""
        if state.n < self.min_n:
            reason = f"{state.n} observations, at least {self.min_n} before deciding"
        more = None if verdict != "continue" else max(self.needed(state) - state.n, 0)
        return Decision(
            verdict,  # type: ignore[arg-type]
            estimate if state.n else math.nan,
            low,
            high,
            state.n,
            self.alpha,
            self.null_effect,
            self.min_effect,
            more,
            reason,
        )


class RateTest:
    """Anytime-valid test of a rate against a known reference rate ``reference`` (exact for
    independent Bernoulli observations; see the module docstring). The effect is the rate minus
    ``reference``, higher is worse: ``fired`` when the rate is shown above ``reference +
    null_effect``, ``clean`` when shown below ``reference + min_effect``. The mixture's prior is
    ``Beta`` with mean ``reference + min_effect`` and ``prior_weight`` pseudo-observations."""

    def __init__(
        self,
        reference: float,
        min_effect: float,
        *,
        alpha: float = 0.01,
        null_effect: float = 0.0,
        prior_weight: float = 10.0,
    ) -> None:
        _check(alpha, null_effect, min_effect)
        if not 0 <= reference < 1 or reference + min_effect >= 1:
            raise ValueError("reference and reference + min_effect must be rates in [0, 1)")
        self.reference, self.min_effect, self.alpha, self.null_effect = (
            reference,
            min_effect,
            alpha,
            null_effect,
        )
        centre = reference + min_effect
        self.a, self.b = centre * prior_weight, (1 - centre) * prior_weight
        self._threshold = math.log(1 / alpha)

    def log_evidence(self, n: ArrayLike, events: ArrayLike, p: float) -> np.ndarray:
        """``log M_n(p)``, vectorised over counts: the mixture likelihood of the counts against
        rate ``p`` (at least ``log(1 / alpha)``: ``p`` is outside the interval)."""
        n, k = np.asarray(n, dtype="float64"), np.asarray(events, dtype="float64")
        log_mix = betaln(self.a + k, self.b + n - k) - betaln(self.a, self.b)
        log_p = math.log(p) if p > 0 else -np.inf
        log_q = math.log1p(-p) if p < 1 else -np.inf
        with np.errstate(invalid="ignore"):
            log_null = np.where(k > 0, k * log_p, 0.0) + np.where(n - k > 0, (n - k) * log_q, 0.0)
        return log_mix - log_null

    def verdicts(self, n: ArrayLike, events: ArrayLike) -> np.ndarray:
        """Vectorised decisions: a bound is past ``p`` when the evidence against ``p`` reaches
        ``1 / alpha`` and the observed rate is on the other side of ``p``."""
        n, events = np.asarray(n, dtype="float64"), np.asarray(events, dtype="float64")
        with np.errstate(divide="ignore", invalid="ignore"):
            rate = events / n
        null, worst = self.reference + self.null_effect, self.reference + self.min_effect
        clean = (self.log_evidence(n, events, worst) >= self._threshold) & (rate < worst)
        fired = (self.log_evidence(n, events, null) >= self._threshold) & (rate > null)
        return VERDICTS[np.where(clean & (n > 0), 2, np.where(fired & (n > 0), 1, 0))]

    def interval(self, state: RateState) -> tuple[float, float]:
        """The rates not rejected at this n (an interval: ``log M_n`` is convex in p)."""
        return _rate_interval(state, self.a, self.b, self.alpha)

    def needed(self, state: RateState) -> int:
        """Trials until the interval is narrow enough to decide at the current rate (at least
        the reference rate, so that a clean record still reports a finite need)."""
        rate = max(state.rate if state.n else 0.0, self.reference + self.min_effect / 2)
        width = self.min_effect - self.null_effect

        def too_wide(n: float) -> float:
            n_int = max(int(n), 1)
            low, high = self.interval(RateState(n_int, round(rate * n_int)))
            return high - low - width

        if too_wide(1e9) > 0:
            return MAX_N
        low, high = 1, 2
        while too_wide(high) > 0:
            low, high = high, high * 2
        while high - low > max(1, low // 100):
            middle = (low + high) // 2
            low, high = (middle, high) if too_wide(middle) > 0 else (low, middle)
        return high

    def decide(self, state: RateState) -> Decision:
        low, high = self.interval(state)
        verdict = str(self.verdicts(state.n, state.events))
        more = None if verdict != "continue" else max(self.needed(state) - state.n, 0)
        offset = self.reference
        return Decision(
            verdict,  # type: ignore[arg-type]
            state.rate - offset if state.n else math.nan,
            low - offset,
            high - offset,
            state.n,
            self.alpha,
            self.null_effect,
            self.min_effect,
            more,
        )


@functools.lru_cache(maxsize=4096)  # the guard re-checks the same states; needed() probes many
def _rate_interval(state: RateState, a: float, b: float, alpha: float) -> tuple[float, float]:
    """The beta-binomial mixture's confidence sequence for a rate at this n: the rates ``p``
    with ``M_n(p) < 1 / alpha`` (an interval: ``log M_n`` is convex in p)."""
    if state.n == 0:
        return 0.0, 1.0
    n, k, threshold = state.n, state.events, math.log(1 / alpha)
    log_mix = float(betaln(a + k, b + n - k) - betaln(a, b))
    centre = min(max(state.rate, 1e-12), 1 - 1e-12)

    def excess(p: float) -> float:
        return log_mix - k * math.log(p) - (n - k) * math.log1p(-p) - threshold

    tiny = 1e-15
    low = 0.0 if excess(tiny) < 0 else brentq(excess, tiny, centre, xtol=1e-12)
    high = 1.0 if excess(1 - tiny) < 0 else brentq(excess, centre, 1 - tiny, xtol=1e-12)
    return low, high


class RateDifferenceTest:
    """Anytime-valid test of the difference of two rates, a version's minus its reference's
    over the same span (e.g. failed requests of a canary and of the champion beside it); higher
    is worse. **Exact** for independent Bernoulli observations: each rate has the beta-binomial
    confidence sequence of ``RateTest`` at ``alpha / 2``, so both hold at every n at once with
    probability at least ``1 - alpha`` (a union bound), and so does their difference
    ``[low_v - high_r, high_v - low_r]``. ``fired`` when the difference is shown above
    ``null_effect``, ``clean`` when shown below ``min_effect``. Each prior is ``Beta`` with mean
    ``typical`` (a rate that is usual for both) and ``prior_weight`` pseudo-observations."""

    def __init__(
        self,
        min_effect: float,
        *,
        alpha: float = 0.01,
        null_effect: float = 0.0,
        typical: float = 0.01,
        prior_weight: float = 10.0,
    ) -> None:
        _check(alpha, null_effect, min_effect)
        if not 0 < typical < 1 or min_effect >= 1:
            raise ValueError("typical must be a rate in (0, 1) and min_effect below 1")
        self.min_effect, self.alpha, self.null_effect = min_effect, alpha, null_effect
        self.a, self.b = typical * prior_weight, (1 - typical) * prior_weight

    def interval(self, version: RateState, reference: RateState) -> tuple[float, float]:
        v_low, v_high = _rate_interval(version, self.a, self.b, self.alpha / 2)
        r_low, r_high = _rate_interval(reference, self.a, self.b, self.alpha / 2)
        return v_low - r_high, v_high - r_low

    def needed(self, version: RateState, reference: RateState) -> int:
        """Trials of the version until the interval is narrow enough to decide, at the current
        rates and the current ratio of the reference's trials to the version's."""
        ratio = reference.n / version.n if version.n and reference.n else 1.0
        rates = [
            max(s.rate if s.n else 0.0, self.a / (self.a + self.b)) for s in (version, reference)
        ]
        width = self.min_effect - self.null_effect

        def too_wide(n: int) -> bool:
            states = [
                RateState(m, round(rate * m))
                for m, rate in zip((n, max(1, round(n * ratio))), rates, strict=True)
            ]
            low, high = self.interval(*states)
            return high - low > width

        if too_wide(10**9):
            return MAX_N
        low, high = 1, 2
        while too_wide(high):
            low, high = high, high * 2
        while high - low > max(1, low // 100):
            middle = (low + high) // 2
            low, high = (middle, high) if too_wide(middle) else (low, middle)
        return high

    def decide(self, version: RateState, reference: RateState) -> Decision:
        low, high = self.interval(version, reference)
        known = version.n > 0 and reference.n > 0
        verdict = str(verdicts(low, high, "greater", self.null_effect, self.min_effect))
        verdict = verdict if known else "continue"
        needed = self.needed(version, reference) if verdict == "continue" else None
        more = None if needed is None else max(needed - version.n, 0)
        return Decision(
            verdict,  # type: ignore[arg-type]
            version.rate - reference.rate if known else math.nan,
            low,
            high,
            version.n,
            self.alpha,
            self.null_effect,
            self.min_effect,
            more,
            "" if known else "no requests of the reference in the span",
        )
