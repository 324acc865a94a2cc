"""The traffic policy: which share of traffic a candidate in rollout gets, stored with the
registry state (a tag of the registered model) so that every replica serves the same.

- ``blue_green``: all traffic to the champion, the standby warm (no rollout);
- ``canary``: the rollout version answers ``percent`` of requests, chosen by a hash of the
  request's sticky key (the same key always goes the same way), in steps such as 5 -> 25 -> 100;
- ``shadow``: the rollout version scores mirrored traffic off the response path; its answers are
  logged (role ``shadow``), never returned.

``drill_gate`` is the promotion rule of ``rollout.require_drill``: a passed rollback drill (see
``rollout.drill``), recent enough.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from prodguard.errors import InputError, PromotionRefused, RegistryError
from prodguard.registry import lineage
from prodguard.registry.ports import TargetsReader, VersionReader

Mode = Literal["blue_green", "canary", "shadow"]


@dataclass(frozen=True)
class TrafficPolicy:
    mode: Mode = "blue_green"
    version: int | None = None  # the version in rollout
    steps: tuple[float, ...] = ()  # canary percentages
    step: int = 0
    step_started: str | None = None  # ISO time the current step (or shadow) began

    @property
    def active(self) -> bool:
        return self.mode != "blue_green" and self.version is not None

    @property
    def percent(self) -> float:
        return self.steps[self.step] if self.mode == "canary" and self.steps else 0.0

    @property
    def last_step(self) -> bool:
        return self.mode != "canary" or self.step >= len(self.steps) - 1

    def started(self) -> datetime | None:
        return datetime.fromisoformat(self.step_started) if self.step_started else None

    def describe(self, standby: bool = True) -> str:
        """One line; ``standby``: whether a standby is set (blue/green says so)."""
        if not self.active:
            warm = "standby warm" if standby else "no standby to roll back to"
            return f"blue/green: all traffic to the champion, {warm}"
        if self.mode == "shadow":
            return f"shadow: v{self.version} scores mirrored traffic (logged, never returned)"
        steps = " -> ".join(f"{s:g}%" for s in self.steps)
        return f"canary: v{self.version} answers {self.percent:g}% (step {self.step + 1}: {steps})"

    def running(self) -> str:
        """The rollout in progress, for a refusal: mode, version, step and since when."""
        since = f"since {self.step_started[:19]}" if self.step_started else "start time unknown"
        if self.mode == "shadow":
            return f"a shadow rollout of v{self.version} is running ({since})"
        return (
            f"a canary rollout of v{self.version} is running (step {self.step + 1} of "
            f"{len(self.steps)}: {self.percent:g}% of traffic, {since})"
        )

    def to_json(self) -> dict[str, Any]:
        document = dict(self.__dict__)
        document["steps"] = list(self.steps)
        return document

    @classmethod
    def from_json(cls, text: str | None) -> TrafficPolicy:
        if not text:
            return cls()
        try:
            document = json.loads(text)
            document["steps"] = tuple(float(s) for s in document.get("steps", ()))
            return cls(**document)
        except (ValueError, TypeError) as exc:
            raise RegistryError(
                f"the stored traffic policy is unreadable ({type(exc).__name__}); reset it with "
                "`prodguard rollout abort`"
            ) from None


def canary_steps(text: str | Sequence[float]) -> tuple[float, ...]:
    """Parse '5,25,100': increasing percentages in (0, 100], the last one 100."""
    try:
        values = (
            tuple(float(s) for s in text.split(",") if s.strip())
            if isinstance(text, str)
            else tuple(float(s) for s in text)
        )
    except ValueError:
        raise InputError("--steps must be percentages separated by commas, e.g. 5,25,100") from None
    if not values or any(not 0 < v <= 100 for v in values):
        raise InputError("--steps must be percentages in (0, 100], e.g. 5,25,100")
    if list(values) != sorted(set(values)) or values[-1] != 100:
        raise InputError("--steps must increase and end at 100, e.g. 5,25,100")
    return values


def in_canary(key: str, percent: float) -> bool:
    """Sticky assignment: the same key is always in or out for a given percentage, and a key in
    at p% stays in at any larger percentage."""
    digest = hashlib.blake2b(key.encode(), digest_size=8, person=b"prodguard-canary").digest()
    return int.from_bytes(digest, "big") / 2**64 * 100 < percent


def read_targets(registry: TargetsReader) -> tuple[dict[str, int | None], TrafficPolicy]:
    """What every replica polls: the aliases and the traffic policy, in one registry read."""
    aliases, text = registry.aliases_and_tag(lineage.TRAFFIC)
    return aliases, TrafficPolicy.from_json(text)


def drill_gate(registry: VersionReader, version: int, max_age_hours: float, now: datetime) -> None:
    """Refuse promoting ``version`` without a passed drill younger than ``max_age_hours``."""
    text = registry.version(version).tags.get(lineage.DRILL)
    hint = f"run `prodguard drill --version {version}` first"
    if not text:
        raise PromotionRefused(f"v{version} has no rollback drill; {hint}")
    record = json.loads(text)
    if not record.get("passed"):
        raise PromotionRefused(f"v{version}'s last drill failed ({record.get('reason')}); {hint}")
    age = now - datetime.fromisoformat(record["at"])
    if age > timedelta(hours=max_age_hours):
        raise PromotionRefused(
            f"v{version}'s drill is {age.total_seconds() / 3600:.0f} h old (at most "
            f"{max_age_hours:g} h); {hint}"
        )
