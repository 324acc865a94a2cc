"""Rollout use cases: start or abort a rollout; build the guard and run it once or in a loop."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from prodguard import wiring
from prodguard.clock import Clock
from prodguard.config import Settings
from prodguard.errors import InputError
from prodguard.loops import repeat
from prodguard.monitoring.jobs import build_monitor
from prodguard.registry.audit import AuditRecord
from prodguard.rollout.guard import Guard, GuardDecision
from prodguard.rollout.policy import TrafficPolicy, canary_steps
from prodguard.serving.prediction_log import PredictionLog


def build_guard(
    settings: Settings, clock: Clock | None = None, log: PredictionLog | None = None
) -> Guard:
    clock = clock or wiring.clock_for(settings)
    operations = wiring.registry_operations(settings, with_checks=True)
    operations.clock = clock
    return Guard(
        operations,
        build_monitor(settings, clock, log),
        settings,
        wiring.alerter_for(settings),
        clock,
    )


def guard_loop(
    settings: Settings,
    on_decision: Callable[[list[GuardDecision]], None],
    *,
    every: float | None = None,
    runs: int | None = None,
    sleep: Callable[[float], Any] = time.sleep,
    stop: threading.Event | None = None,
) -> None:
    """Check once (``every`` None) or every ``every`` seconds until ``stop`` is set; a failed
    check (registry or log unreachable) is reported as ``hold`` and the loop goes on."""
    guard = build_guard(settings)

    def failed(error: Exception) -> list[GuardDecision]:
        return [GuardDecision("hold", datetime.now(UTC), None, reason=f"check failed: {error}")]

    repeat(guard.check, on_decision, every=every, failed=failed, runs=runs, sleep=sleep, stop=stop)


def start_rollout(
    settings: Settings,
    mode: str,
    actor: str,
    steps: str | None = None,
    version: int | None = None,
) -> AuditRecord:
    """Put the candidate (or ``version``) into canary or shadow traffic (audited)."""
    if mode not in ("canary", "shadow"):
        raise InputError("--mode must be canary or shadow")
    parsed = canary_steps(steps if steps is not None else settings.rollout.canary_steps)
    operations = wiring.registry_operations(settings, with_checks=True)
    return operations.start_rollout(mode, actor, parsed, version)  # type: ignore[arg-type]


def abort_rollout(settings: Settings, actor: str, reason: str) -> AuditRecord:
    """Take the rollout version out of traffic (blue/green again), audited."""
    operations = wiring.registry_operations(settings)
    current = operations.traffic()
    if not current.active:
        raise InputError("no rollout is in progress (see `prodguard status`)")
    return operations.set_traffic(TrafficPolicy(), actor, reason, expected=current)
