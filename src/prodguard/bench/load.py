"""Closed-loop HTTP load on loopback: ``concurrency`` clients, each with one keep-alive
connection, send the next request as soon as their previous one is answered.

Each answer's latency is measured at the client; the server's own stage timings come from its
``Server-Timing`` header (``stage;dur=<ms>``). ``http`` = client latency - the server's
``total``: HTTP parsing and validation, serialization, the framework's queueing and loopback.
"""

from __future__ import annotations

import http.client
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from prodguard.bench.stats import DIGITS, Summary, summarize
from prodguard.errors import ServiceNotReady

TIMEOUT_S = 30.0


@dataclass(frozen=True)
class LevelResult:
    """One concurrency level: latency (client side), stage timings (server side), throughput."""

    concurrency: int
    requests: int
    errors: int
    seconds: float
    latency: Summary
    stages: dict[str, Summary] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        """Answered (2xx) requests per second."""
        return round((self.requests - self.errors) / self.seconds, DIGITS) if self.seconds else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "requests": self.requests,
            "errors": self.errors,
            "statuses": self.statuses,
            "seconds": round(self.seconds, DIGITS),
            "throughput": self.throughput,
            "latency_ms": self.latency.to_json(),
            "stages_ms": {name: s.to_json() for name, s in self.stages.items()},
        }


def server_timing(header: str | None) -> dict[str, float]:
    """``checks;dur=0.01, model;dur=5.2`` -> {"checks": 0.01, "model": 5.2} (milliseconds)."""
    timings: dict[str, float] = {}
    for entry in (header or "").split(","):
        name, _, params = entry.strip().partition(";")
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if name and key == "dur":
                try:
                    timings[name] = float(value)
                except ValueError:
                    continue
    return timings


@dataclass
class Samples:
    """What one closed-loop run saw: client latencies and server stages (ms) of the answered
    requests, status counts, and how long it took."""

    latencies: list[float] = field(default_factory=list)
    stages: dict[str, list[float]] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    sent: int = 0
    seconds: float = 0.0


def merge(concurrency: int, runs: list[Samples]) -> LevelResult:
    """One level's result from the runs (rounds) it was measured in."""
    latencies = [v for r in runs for v in r.latencies]
    if not latencies:
        seen = [r.statuses for r in runs]
        raise ServiceNotReady(f"no request was answered at concurrency {concurrency}: {seen}")
    stages: dict[str, list[float]] = {}
    statuses: dict[str, int] = {}
    for run in runs:
        for name, values in run.stages.items():
            stages.setdefault(name, []).extend(values)
        for status, count in run.statuses.items():
            statuses[status] = statuses.get(status, 0) + count
    return LevelResult(
        concurrency=concurrency,
        requests=sum(r.sent for r in runs),
        errors=sum(r.errors for r in runs),
        seconds=sum(r.seconds for r in runs),
        latency=summarize(latencies),
        stages={name: summarize(values) for name, values in sorted(stages.items())},
        statuses=dict(sorted(statuses.items())),
    )


def drive(base_url: str, path: str, bodies: list[bytes], concurrency: int) -> Samples:
    """Send every body once, ``concurrency`` at a time."""
    if concurrency < 1 or not bodies:
        raise ValueError("need at least one client and one request")
    target = urlsplit(base_url)
    host, port = target.hostname or "127.0.0.1", target.port or 80
    queue = itertools.count()
    tally = Samples(sent=len(bodies))
    lock = threading.Lock()
    start = threading.Barrier(concurrency + 1)

    def client() -> None:
        connection = http.client.HTTPConnection(host, port, timeout=TIMEOUT_S)
        start.wait()
        try:
            while (index := next(queue)) < len(bodies):
                began = time.perf_counter()
                try:
                    connection.request(
                        "POST", path, bodies[index], {"Content-Type": "application/json"}
                    )
                    response = connection.getresponse()
                    response.read()
                    status, timing = str(response.status), response.getheader("Server-Timing")
                except (OSError, http.client.HTTPException) as exc:
                    connection.close()  # reconnects at the next request
                    status, timing = type(exc).__name__, None
                elapsed = (time.perf_counter() - began) * 1000
                with lock:
                    tally.statuses[status] = tally.statuses.get(status, 0) + 1
                    if not status.startswith("2"):
                        tally.errors += 1
                        continue
                    tally.latencies.append(elapsed)
                    stages = server_timing(timing)
                    if "total" in stages:
                        stages["http"] = max(elapsed - stages["total"], 0.0)
                    for name, ms in stages.items():
                        tally.stages.setdefault(name, []).append(ms)
        finally:
            connection.close()

    threads = [
        threading.Thread(target=client, name=f"bench-client-{i}", daemon=True)
        for i in range(concurrency)
    ]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    tally.seconds = time.perf_counter() - began
    return tally
