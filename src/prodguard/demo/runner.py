"""What a demo story does, step by step, on simulated time; every step leaves records.

A story (the project's ``demo.story``) calls these steps in order. The run starts from an empty
data folder, shares its clock (``clock.file``) with every process it starts, serves traffic
through the real HTTP service, runs the guard and the monitors on the simulated clock, and
records events (``events.json``) and a summary page in ``<data_dir>/demo``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from prodguard import app, wiring
from prodguard.alerts import AlertGate
from prodguard.clock import FileClock
from prodguard.config import Settings, load_settings
from prodguard.demo.events import EventLog
from prodguard.demo.service import ServiceProcess
from prodguard.demo.traffic import HttpTraffic, OnlineFeed, TrafficResult
from prodguard.durable import write_json_atomic
from prodguard.errors import InputError
from prodguard.monitoring.jobs import (
    alert_gate,
    build_monitor,
    drift_report,
    record_baseline,
    run_monitor,
    served_versions,
)
from prodguard.monitoring.monitor import Monitor
from prodguard.project import load_loader
from prodguard.rollout.drill import run_drill
from prodguard.rollout.faults import register_faulty
from prodguard.rollout.guard import Guard, GuardDecision
from prodguard.rollout.jobs import build_guard, start_rollout

MARKER = "events.json"
GUARD_MOVES = ("rolled_back", "advanced", "promoted", "aborted", "ended", "restarted")


class Story(Protocol):
    """A project's demo: settings it plays under (``PRODGUARD_*`` overrides), and the play."""

    environment: dict[str, str]
    outcome_hours: float  # how long after a request its outcome is fed back
    single_share: float  # share of requests sent one by one (per-request latency)

    def play(self, run: DemoRun, short: bool) -> None: ...


def prepare_data_dir(data_dir: Path) -> None:
    """Start clean: remove a previous demo's folder; refuse to touch state the demo did not
    make."""
    if data_dir.exists() and any(data_dir.iterdir()):
        if not (data_dir / "demo" / MARKER).exists():
            raise InputError(
                f"{data_dir} holds state that `prodguard demo` did not create; move it away, "
                "run `make clean`, or point PRODGUARD_PATHS__DATA_DIR at an empty folder"
            )
        shutil.rmtree(data_dir)


class DemoRun:
    def __init__(self, config_path: Path, story: Story, console: Console) -> None:
        base = load_settings(config_path)
        self.output = base.paths.data_dir / "demo"
        prepare_data_dir(base.paths.data_dir)
        self.output.mkdir(parents=True)
        clock_file = self.output / "clock"
        self.environment = {
            **story.environment,
            "PRODGUARD_CONFIG": str(base.config_path),
            "PRODGUARD_CLOCK__FILE": str(clock_file),
        }
        self.settings: Settings = load_settings(config_path, {**os.environ, **self.environment})
        self.clock = FileClock(clock_file)
        self.console = console
        self.story = story
        self.began = time.perf_counter()
        self.service: ServiceProcess | None = None
        self.monitor_reports: list[dict[str, Any]] = []
        self.traffic: list[TrafficResult] = []
        self.reports: list[dict[str, Any]] = []
        self.figures: dict[str, Any] = {}
        self._operations = wiring.registry_operations(self.settings, with_checks=True)
        self.events = EventLog(
            self.output / MARKER, self.settings.paths.alerts_file, self._operations
        )
        self._guard: Guard | None = None
        self._monitor: Monitor | None = None
        self._gate: AlertGate | None = None
        self._feed: OnlineFeed | None = None
        self._traffic: HttpTraffic | None = None
        self._promoted_by_user: float | None = None
        self._loader = load_loader(self.settings)  # reads the raw files once, on first use

    # ---- time and records --------------------------------------------------------------

    def at(self, when: datetime) -> None:
        self.clock.set(when)

    @property
    def now(self) -> datetime:
        return self.clock.now()

    @contextmanager
    def chapter(self, title: str) -> Iterator[None]:
        self.console.rule(f"[bold]{title}[/bold]  [dim]{self.now:%Y-%m-%d %H:%M} (simulated)")
        began = time.perf_counter()
        yield
        self.collect()
        self.console.print(f"[dim]{time.perf_counter() - began:.1f} s[/dim]")

    def collect(self) -> list[dict[str, Any]]:
        new = self.events.collect(self.now)
        for event in new:
            self.console.print(f"  [yellow]event[/yellow] {describe(event)}", soft_wrap=True)
        return new

    def progress(self) -> Progress:
        return Progress(
            TextColumn("  {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )

    # ---- data and models ---------------------------------------------------------------

    def ingest(
        self, start: datetime, end: datetime, sources: list[str] | None = None
    ) -> app.IngestReport:
        with self.progress() as bars:
            task = bars.add_task("ingesting batches", total=None)
            report = app.ingest(
                self.settings,
                start,
                end,
                sources,
                on_batch=lambda _: bars.advance(task),
                loader=self._loader,
            )
        self._reload_feed()
        written = report.written
        self.console.print(
            f"  ingested {written:,} rows in {len(report.batches)} batches "
            f"({len(report.quarantined)} quarantined) in {report.seconds:.1f} s"
        )
        return report

    def ingest_file(self, source: str, path: Path) -> app.IngestReport:
        report = app.ingest(self.settings, sources=[source], batch_file=path)
        self._reload_feed()
        return report

    def materialize(self, until: datetime) -> None:
        done = app.materialize(self.settings, until=until)
        self.console.print(
            f"  online store as of {until:%Y-%m-%d %H:%M}: "
            + ", ".join(f"{k} {v:,}" for k, v in done.online_rows.items())
        )

    def train(self, start: datetime, end: datetime) -> int:
        with self.console.status("  point-in-time training frame, fit, evaluate, register..."):
            result = app.train(self.settings, start, end, actor="demo")
        metrics = {k: round(v, 4) for k, v in result.metrics.items()}
        shown = ", ".join(f"{k} {v:.3f}" for k, v in list(metrics.items())[:3])  # any task's
        self.console.print(
            f"  v{result.version}: {shown} on "
            f"{result.rows_eval:,} held-out rows ({result.rows_train:,} training rows)"
        )
        self.events.add(
            "training",
            self.now,
            result.version,
            train_window=f"{start.isoformat()}/{end.isoformat()}",
            metrics=metrics,
        )
        return result.version

    def baseline(self, start: datetime, end: datetime, version: int) -> None:
        with self.console.status(f"  staging replay of v{version} for its baseline..."):
            done = record_baseline(self.settings, start, end, version=version)
        base = done.baseline
        self.console.print(
            f"  v{version} baseline: {base.details['windows']} windows of "
            f"{done.replay.predicted:,} staged predictions in {done.seconds:.1f} s"
        )
        self.events.add(
            "baseline",
            self.now,
            version,
            period=f"{start.isoformat()}/{end.isoformat()}",
            windows=base.details["windows"],
            score_mean=base.metrics["score.mean"].mean,
        )

    def drill(self, version: int) -> None:
        with self.console.status(f"  rollback drill of v{version} on a staging overlay..."):
            result = run_drill(self.settings, version)
        self.console.print(f"  drill: {result.reason}", soft_wrap=True)
        self.events.add("drill", self.now, version, **result.to_json())
        if not result.passed:
            raise InputError(f"the rollback drill of v{version} failed: {result.reason}")

    def promote(self, version: int, reason: str) -> None:
        with self.following():
            self._operations.promote("demo", reason, version=version)

    def promote_as_user(self, version: int, reason: str) -> float:
        """``prodguard promote`` as a user types it (same settings and clock); returns its
        wall seconds."""
        command = [
            str(Path(sys.executable).with_name("prodguard")),
            "promote",
            "--version",
            str(version),
            "--reason",
            reason,
        ]
        began = time.perf_counter()
        with self.following():
            done = subprocess.run(
                command,
                env={**os.environ, **self.environment},
                capture_output=True,
                text=True,
                timeout=300,
                stdin=subprocess.DEVNULL,
            )
            if done.returncode != 0:
                raise InputError(f"`prodguard promote` failed: {done.stderr.strip()[-300:]}")
        self._promoted_by_user = time.perf_counter()
        return self._promoted_by_user - began

    def champion(self) -> int:
        champion = self._operations.state().champion
        if champion is None:
            raise InputError("the story needs a champion here; promote one first")
        return champion

    def register_faulty(self, base: int, shift: float) -> int:
        # lazy: scikit-learn loads only for the commands that need it
        from prodguard.training.trainer import pip_requirements

        version = register_faulty(self._operations, base, shift, "demo", pip_requirements())
        self.events.add("faulty_version", self.now, version, base=base, shift=shift)
        return version

    def start_rollout(self, mode: str, steps: list[float]) -> None:
        with self.following():
            start_rollout(self.settings, mode, "demo", ",".join(f"{s:g}" for s in steps))

    # ---- serving -----------------------------------------------------------------------

    def start_service(self, features_since: datetime) -> None:
        self.service = ServiceProcess(self.settings, self.environment, self.output / "service.log")
        seconds = self.service.cold_start_s
        self.figures["service_ready_seconds"] = round(seconds, 1)
        self.console.print(f"  prediction service ready on {self.service.url} in {seconds:.1f} s")
        feed = OnlineFeed(self.settings, wiring.feature_store(self.settings), features_since)
        self._feed = feed
        self._traffic = HttpTraffic(  # one for the run: outcomes still due carry over
            self.settings,
            self.service,
            self.clock,
            feed,
            outcome_after=timedelta(hours=self.story.outcome_hours),
            single_share=self.story.single_share,
        )

        self._guard = build_guard(self.settings)
        self._monitor = build_monitor(self.settings)
        self._gate = alert_gate(self.settings)

    @contextmanager
    def following(self) -> Iterator[None]:
        """Around a registry move: wait until the service has followed it (its poll), and
        record how long that took."""
        before = self.service.swaps() if self.service is not None else None
        yield
        if self.service is not None and before is not None:
            seconds = self.service.wait_swap(before)
            self.figures.setdefault("follow_seconds", []).append(round(seconds, 2))

    def serve(
        self, start: datetime, end: datetime, label: str, guard_every_hours: int = 6
    ) -> TrafficResult:
        """Serve ``[start, end)`` over HTTP; the guard checks every ``guard_every_hours`` and
        the monitors judge every closed day."""
        assert self._traffic is not None, "start_service first"
        hours = int((end - start).total_seconds() // 3600)
        with self.progress() as bars:
            task = bars.add_task(f"serving {label}", total=hours)
            result = self._traffic.play(
                start,
                end,
                after_hour=lambda hour: self._after_hour(hour, guard_every_hours),
                on_hour=lambda _: bars.advance(task),
            )
        self.traffic.append(result)
        versions = ", ".join(f"v{v}: {n:,}" for v, n in sorted(result.by_version.items()))
        self.console.print(
            f"  {result.answered:,} answered ({versions}), {result.degraded:,} degraded, "
            f"{result.rejected:,} refused, {result.failed:,} failed, {result.feedback:,} "
            f"outcomes fed back, in {result.seconds:.1f} s"
        )
        self.collect()
        return result

    def _after_hour(self, hour: datetime, guard_every: int) -> None:
        self.clock.set(hour)
        checked = hour.hour % guard_every == 0
        if checked:
            self.guard_check()
        if hour.hour == 0:
            self.monitor()
        if checked or hour.hour == 0:
            self.collect()

    def guard_check(self) -> list[GuardDecision]:
        before = self.service.swaps() if self.service is not None else 0.0
        began = time.perf_counter()
        assert self._guard is not None, "the guard is built when the service starts"
        decisions = self._guard.check()
        moved = [d for d in decisions if d.action in GUARD_MOVES]
        if moved and self.service is not None:
            self.service.wait_swap(before)
            self.figures.setdefault("guard_move_to_followed_seconds", []).append(
                round(time.perf_counter() - began, 2)
            )
            rolled_back = any(d.action == "rolled_back" for d in moved)
            if rolled_back and self._promoted_by_user is not None:
                self.figures["cli_promotion_to_rollback_followed_seconds"] = round(
                    time.perf_counter() - self._promoted_by_user, 2
                )
                self._promoted_by_user = None
        for decision in decisions:
            if decision.action in GUARD_MOVES:
                self.console.print(
                    f"  [cyan]guard[/cyan] v{decision.version} {decision.action}: "
                    f"{decision.reason}",
                    soft_wrap=True,
                )
        return decisions

    def monitor(self) -> None:
        assert self._monitor is not None and self._gate is not None, (
            "monitors are built with the service"
        )
        done = run_monitor(
            self._monitor,
            self._gate,
            now=self.now,
            served=lambda: served_versions(*self._operations.targets()),
        )
        self.monitor_reports.extend(r.to_json() for r in done.reports)

    def drift_report(
        self, start: datetime, end: datetime, version: int | None = None
    ) -> dict[str, Any]:
        """An Evidently report of ``[start, end)`` for ``version`` (default: the champion)."""

        with self.console.status("  Evidently drift report..."):
            entry = drift_report(self.settings, start, end, version, now=self.now).to_json()
        path = self.settings.paths.reports_dir / entry["file"]
        self.reports.append({**entry, "path": str(path)})
        self.events.add(
            "drift_report",
            self.now,
            entry["details"]["model_version"],
            file=str(path),
            drifted=entry["drifted"],
            window=f"{start.isoformat()}/{end.isoformat()}",
        )
        self.console.print(f"  report: {path} (drifted: {', '.join(entry['drifted']) or 'none'})")
        return entry

    def stop_service(self) -> None:
        if self.service is not None:
            self.service.stop()
            self.service = None

    def _reload_feed(self) -> None:
        if self._feed is not None:
            self._feed.reload()

    def save(self) -> None:
        write_json_atomic(self.monitor_reports, self.output / "monitor.json")
        write_json_atomic([t.to_json() for t in self.traffic], self.output / "traffic.json")


def describe(event: dict[str, Any]) -> str:
    details = event["details"]
    text = details.get("message") or details.get("reason") or ""
    version = f" v{event['model_version']}" if event.get("model_version") is not None else ""
    return f"{event['time'][:16]} {event['type']}{version} {text}".strip()
