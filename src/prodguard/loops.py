"""Running a job once, or every N seconds while surviving its failures (monitor, guard)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from prodguard.errors import InputError, RegistryError, StorageError

T = TypeVar("T")
_log = logging.getLogger("prodguard")


def repeat(
    step: Callable[[], T],
    on_result: Callable[[T], None],
    *,
    every: float | None,
    failed: Callable[[Exception], T],
    runs: int | None = None,
    sleep: Callable[[float], Any] = time.sleep,
    stop: threading.Event | None = None,
) -> None:
    """Run ``step`` once (``every`` None: its errors propagate) or every ``every`` seconds until
    ``stop`` is set or ``runs`` are done; in a loop, a registry or storage failure becomes
    ``failed(error)`` (reported like any result) and the loop goes on."""
    if every is not None and every <= 0:
        raise InputError("--every must be a positive number of seconds")
    done = 0
    while stop is None or not stop.is_set():
        try:
            result = step()
        except (RegistryError, StorageError) as exc:
            if every is None:
                raise
            _log.error("%s failed: %s", getattr(step, "__name__", "job"), exc)
            result = failed(exc)
        on_result(result)
        done += 1
        if every is None or (runs is not None and done >= runs):
            return
        sleep(every)
