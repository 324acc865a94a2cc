"""Injected time: everything that looks at the clock takes a ``Clock``."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from prodguard.errors import ConfigError


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    """Wall-clock time in UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class FixedClock:
    """A clock that only moves when told to (tests, replays of historical traffic)."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("FixedClock needs a timezone-aware datetime")
        self._now = start

    def now(self) -> datetime:
        return self._now

    def set(self, when: datetime) -> None:
        if when.tzinfo is None:
            raise ValueError("FixedClock needs a timezone-aware datetime")
        self._now = when


class FileClock:
    """Simulated time shared between processes: the time is an ISO 8601 instant in a file.

    One process (a replay driver) moves it with ``set``; every process configured with the same
    file (``clock.file``: the service, the CLI, monitors) reads it. The file is re-parsed only
    when it was replaced, so ``now()`` costs one ``stat`` on the request path.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int] | None = None
        self._now: datetime | None = None

    def now(self) -> datetime:
        try:
            stat = self.path.stat()
            key = (stat.st_ino, stat.st_mtime_ns)
            if key != self._seen:
                self._now = _parse_instant(self.path.read_text(encoding="utf-8"), self.path)
                self._seen = key
        except OSError as exc:
            raise ConfigError(
                f"clock.file {self.path} cannot be read ({type(exc).__name__}); write an ISO "
                "8601 instant to it or unset clock.file to use the system clock"
            ) from None
        assert self._now is not None
        return self._now

    def set(self, when: datetime) -> None:
        if when.tzinfo is None:
            raise ValueError("FileClock needs a timezone-aware datetime")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(when.astimezone(UTC).isoformat(), encoding="utf-8")
        os.replace(partial, self.path)  # readers see the old instant or the new, never half


def _parse_instant(text: str, path: Path) -> datetime:
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(
            f"clock.file {path} does not hold an ISO 8601 instant; write e.g. "
            "2013-05-01T00:00:00+00:00"
        ) from None
    if when.tzinfo is None:
        raise ConfigError(f"clock.file {path}: the instant needs a timezone, e.g. +00:00")
    return when
