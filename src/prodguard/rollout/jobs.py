"""Guard use cases: build the guard from the settings, run it once or in a loop."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from prodguard import app
from prodguard.clock import Clock, SystemClock
from prodguard.config import Settings
from prodguard.errors import InputError, RegistryError, StorageError
from prodguard.monitoring.jobs import build_monitor
from prodguard.rollout.guard import Guard, GuardDecision
from prodguard.serving.prediction_log import PredictionLog

_log = logging.getLogger("prodguard.rollout")


def build_guard(
    settings: Settings, clock: Clock | None = None, log: PredictionLog | None = None
) -> Guard:
    clock = clock or SystemClock()
    operations = app.registry_operations(settings)
    operations.clock = clock
    return Guard(
        operations,
        build_monitor(settings, clock, log),
        settings,
        app.alerter_for(settings),
        clock,
    )


def guard_loop(
    settings: Settings,
    on_decision: Callable[[GuardDecision], None],
    *,
    every: float | None = None,
    runs: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Check once (``every`` None) or every ``every`` seconds; a failed check (registry or log
    unreachable) is reported as ``hold`` and the loop goes on."""
    if every is not None and every <= 0:
        raise InputError("--every must be a positive number of seconds")
    guard = build_guard(settings)
    done = 0
    while True:
        try:
            decision = guard.check()
        except (RegistryError, StorageError) as exc:
            if every is None:
                raise
            _log.error("guard check failed: %s", exc)
            decision = GuardDecision("hold", datetime.now(UTC), None, reason=f"check failed: {exc}")
        on_decision(decision)
        done += 1
        if every is None or (runs is not None and done >= runs):
            return
        sleep(every)
