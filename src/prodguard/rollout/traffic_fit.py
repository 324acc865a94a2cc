"""Whether the guard's and monitors' sizes fit the traffic the project actually gets.

A window judged on fewer requests than its minimum is inconclusive: it never promotes and never
rolls back. At a few dozen requests a day the defaults (sized for thousands) leave every check
inconclusive forever; ``misfits`` says so, with the values that would fit, and ``fitted`` drafts
the sizes that fill at a given rate (``prodguard init``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from prodguard.config import MonitoringSettings, RolloutSettings

DAY_MINUTES = 1440.0
FEWEST = 20  # a check on fewer requests decides on noise: sizes are never drafted below this


@dataclass(frozen=True)
class _Size:
    """A check that needs ``count`` requests within ``minutes``; ``share`` of the traffic
    reaches it; ``longest`` is the longest period drafted before the count is lowered.
    ``accumulates``: the check counts from its start until it has them (a canary step), so
    ``minutes`` is only its least duration and ``longest`` how long it may reasonably wait."""

    count_name: str
    count: int
    minutes_name: str
    minutes: float
    what: str
    share: float
    longest: float
    accumulates: bool = False

    @property
    def reach(self) -> float:
        """The longest period the check is given: ``longest``, or its own if set longer."""
        return max(self.longest, self.minutes)

    def expected(self, requests_per_day: float, minutes: float | None = None) -> float:
        period = self.minutes if minutes is None else minutes
        return requests_per_day * self.share * period / DAY_MINUTES

    def minutes_for(self, requests_per_day: float, count: float) -> int:
        return math.ceil(count / (requests_per_day * self.share) * DAY_MINUTES)


def _sizes(rollout: RolloutSettings, monitoring: MonitoringSettings) -> list[_Size]:
    first = rollout.canary_steps[0]
    sizes = [
        _Size(
            "rollout.triggers.min_requests",
            rollout.triggers.min_requests,
            "rollout.guard_minutes",
            rollout.guard_minutes,
            "every guard check",
            1.0,
            7 * DAY_MINUTES,
        ),
        _Size(
            "rollout.bake_min_requests",
            rollout.bake_min_requests,
            "rollout.bake_minutes",
            rollout.bake_minutes,
            f"the first canary step ({first:g} % of the traffic)",
            first / 100,
            DAY_MINUTES,
            accumulates=True,
        ),
    ]
    window = monitoring.window.minutes
    if window is not None:
        sizes.append(
            _Size(
                "monitoring.window.min_rows",
                monitoring.window.min_rows,
                "monitoring.window.minutes",
                window,
                "every monitoring window",
                1.0,
                7 * DAY_MINUTES,
            )
        )
    return sizes


def misfits(
    requests_per_day: float, rollout: RolloutSettings, monitoring: MonitoringSettings
) -> list[str]:
    """One line per size the observed rate cannot fill, naming the settings and what fits."""
    if requests_per_day <= 0:
        return []
    rate = requests_per_day
    lines = []
    for size in _sizes(rollout, monitoring):
        if size.accumulates:
            if size.expected(rate, size.reach) < size.count:
                days = size.minutes_for(rate, size.count) / DAY_MINUTES
                fits = max(1, math.floor(size.expected(rate, size.reach)))
                lines.append(
                    f"at ~{rate:.3g} requests/day, {size.count_name} {size.count} keeps "
                    f"{size.what} waiting ~{days:.3g} days for its requests: set "
                    f"{size.count_name} <= {fits}"
                )
            continue
        expected = size.expected(rate)
        if expected >= size.count:
            continue
        fits_count = max(1, math.floor(expected))
        lines.append(
            f"at ~{rate:.3g} requests/day, {size.count_name} {size.count} and "
            f"{size.minutes_name} {size.minutes:g} leave {size.what} inconclusive "
            f"(~{expected:.0f} requests each): set {size.count_name} <= {fits_count} or "
            f"{size.minutes_name} >= {size.minutes_for(rate, size.count)}"
        )
    return lines


def fitted(
    requests_per_day: float, rollout: RolloutSettings, monitoring: MonitoringSettings
) -> dict[str, int]:
    """The settings (dotted names) that let every check fill at this rate; empty when the
    sizes fit already. A check's period is lengthened first (whole hours, whole days beyond
    one), up to its longest (a week for the guard and the monitoring window); beyond that its
    count is lowered to what the longest period holds, never below ``FEWEST``, the period then
    long enough for ``FEWEST``. A canary step keeps its least duration and gets the count its
    first step gathers in a day (never below ``FEWEST``: then it waits longer)."""
    if requests_per_day <= 0:
        return {}
    rate = requests_per_day
    changes: dict[str, int] = {}
    for size in _sizes(rollout, monitoring):
        longest = size.reach
        if size.accumulates:
            count = max(FEWEST, math.floor(size.expected(rate, longest)))
            if count < size.count:
                changes[size.count_name] = count
            continue
        if size.expected(rate) >= size.count:
            continue
        minutes = _rounded(size.minutes_for(rate, size.count))
        if minutes <= longest:
            changes[size.minutes_name] = minutes
            continue
        count = max(FEWEST, math.floor(size.expected(rate, longest)))
        if count < size.count:
            changes[size.count_name] = count
        changes[size.minutes_name] = max(
            int(longest), _rounded(size.minutes_for(rate, min(count, size.count)))
        )
    return changes


def _rounded(minutes: int) -> int:
    """Whole hours up to a day, whole days beyond."""
    unit = 60 if minutes <= DAY_MINUTES else int(DAY_MINUTES)
    return math.ceil(minutes / unit) * unit
