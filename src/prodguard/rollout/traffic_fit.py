"""Whether the guard's and monitors' sizes fit the traffic the project actually gets.

A window judged on fewer requests than its minimum is inconclusive: it never promotes and never
rolls back. At a few dozen requests a day the defaults (sized for thousands) leave every check
inconclusive forever; ``misfits`` says so, with the values that would fit.
"""

from __future__ import annotations

import math

from prodguard.config import MonitoringSettings, RolloutSettings

DAY_MINUTES = 1440.0


def misfits(
    requests_per_day: float, rollout: RolloutSettings, monitoring: MonitoringSettings
) -> list[str]:
    """One line per size the observed rate cannot fill, naming the settings and what fits."""
    if requests_per_day <= 0:
        return []
    rate = requests_per_day
    lines = []
    checks = [
        (
            "rollout.triggers.min_requests",
            rollout.triggers.min_requests,
            "rollout.guard_minutes",
            rollout.guard_minutes,
            "every guard check",
        ),
        (
            "rollout.bake_min_requests",
            rollout.bake_min_requests,
            "rollout.bake_minutes",
            rollout.bake_minutes,
            "every canary step",
        ),
    ]
    window = monitoring.window.minutes
    if window is not None:
        checks.append(
            (
                "monitoring.window.min_rows",
                monitoring.window.min_rows,
                "monitoring.window.minutes",
                window,
                "every monitoring window",
            )
        )
    for count_name, needed, minutes_name, minutes, what in checks:
        expected = rate * minutes / DAY_MINUTES
        if expected >= needed:
            continue
        fits_count = max(1, math.floor(expected))
        fits_minutes = math.ceil(needed / rate * DAY_MINUTES)
        lines.append(
            f"at ~{rate:.3g} requests/day, {count_name} {needed} and {minutes_name} {minutes:g} "
            f"leave {what} inconclusive (~{expected:.0f} requests each): set {count_name} <= "
            f"{fits_count} or {minutes_name} >= {fits_minutes}"
        )
    return lines
