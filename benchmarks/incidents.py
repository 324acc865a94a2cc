"""Alerts and incidents per benign week of the flights replay (prints figures; asserts nothing).

April 2013, the month after training, split by request id into two halves of equal size: the
staging baseline is taken on one half, and the monitors judge the other half day by day, as a
deployment's monitor would (the window ending each midnight, through the de-duplicating gate
into the incident sink). Printed: alerts sent and incidents opened per week, the incidents
with their causes. Then the same for a week whose weather source goes stale (its rows a day
old) from ``--stale-from``, and for the seasons: the same version serving May to ``--through``
unchanged (no fault; the weather of summer drifts away from April's).

Run: .venv/bin/python benchmarks/incidents.py [--work DIR] [--through 2013-08-01]
(the work folder of benchmarks/monitoring_quality.py can be reused: its project and logs)
Takes a few minutes on first run (ingest Jan-May, train, replay April twice).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from replay_project import half, replayer, trained_project


class Stale:
    """The online store with one view's rows a day old (past its TTL) from ``since`` on."""

    def __init__(self, store: Any, now: Any, since: datetime, features: set[str]) -> None:
        self.store, self.now, self.since, self.features = store, now, since, features

    def online_records(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        records = self.store.online_records(rows)
        if self.now() >= self.since:
            for record in records:
                for name in self.features:
                    if record.get(f"{name}__ts"):
                        record[f"{name}__ts"] -= 86_400
        return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--stale-from", default="2013-04-22")
    parser.add_argument("--through", default="2013-08-01")
    args = parser.parse_args()

    from prodguard import app, wiring
    from prodguard.alerts import Alerter, AlertGate, FileGateState, JsonlSink
    from prodguard.clock import FixedClock
    from prodguard.incidents import FileIncidentRecord, IncidentSink
    from prodguard.monitoring.alerting import alerts_of
    from prodguard.monitoring.jobs import baseline_from_log, version_reference
    from prodguard.monitoring.monitor import Monitor
    from prodguard.telemetry import disable_telemetry
    from prodguard.timewindows import parse_time as t

    disable_telemetry()
    work = args.work or Path(tempfile.mkdtemp(prefix="prodguard-incidents-"))
    april, may = t("2013-04-01"), t("2013-05-01")
    settings, registry, version = trained_project(
        work, (t("2013-01-01"), may), (t("2013-01-01"), april), "bench"
    )
    reference = version_reference(registry, version)

    through = t(args.through)
    marker = work / "ingested_through"
    if through > may and (not marker.exists() or t(marker.read_text()) < through):
        began = time.perf_counter()
        app.ingest(settings, may, through)
        marker.write_text(through.isoformat())
        print(f"ingested May..{through:%Y-%m-%d}: {time.perf_counter() - began:.0f} s")

    replay = replayer(work, settings, registry, version)

    def replayed(name: str, start: Any = april, end: Any = may, **options: Any) -> Any:
        return replay(name, start, end, **options)

    fitted = baseline_from_log(
        settings, replayed("staging_half", keep=half), version, april, may, reference
    )
    views = wiring.feature_store(settings).versions()
    stale_view = max(
        (v for v in views if not settings.sources[v.source].static), key=lambda v: len(v.features)
    )
    since = t(args.stale_from)
    stale_features = {name for name, _ in stale_view.features}
    scenarios = {
        "benign (held-out half of April)": (
            replayed("held_out", keep=lambda r: not half(r)),
            april,
            may,
        ),
        f"source '{stale_view.source}' stale from {since:%Y-%m-%d}": (
            replayed(
                f"stale_{since:%m%d}",
                keep=lambda r: not half(r),
                wrap_store=lambda store, clock: Stale(store, clock.now, since, stale_features),
            ),
            april,
            may,
        ),
    }
    if through > may:
        scenarios[f"seasons: unchanged May..{through:%Y-%m-%d} (no fault)"] = (
            replayed(f"seasons_{through:%m%d}", may, through, keep=lambda r: not half(r)),
            may,
            through,
        )
    for name, (log, start, end) in scenarios.items():
        folder = Path(tempfile.mkdtemp(prefix="alerts-", dir=work))
        incidents = IncidentSink(
            FileGateState(folder / "open_incidents.json"),
            FileIncidentRecord(folder / "incidents.jsonl"),
            wiring.incident_sink(settings).grouping,
            gap=timedelta(hours=settings.alerts.incident_gap_hours),
        )
        record = JsonlSink(folder / "alerts.jsonl")
        gate = AlertGate(FileGateState(folder / "open_alerts.json"), Alerter([record, incidents]))
        monitor = Monitor(
            log,
            lambda _: replace(reference, baseline=fitted),
            settings.monitoring,
            FixedClock(end + timedelta(days=2)),
        )
        reports = monitor.over(start, end)
        for day in sorted({r.end for r in reports}):  # one monitor run per midnight
            raised, cleared = alerts_of([r for r in reports if r.end == day], day)
            gate.update(raised, cleared, through=day)
            gate.alerter.sweep(day)
        sent = [a for a in record.read() if a["type"] != "resolved"]
        found = incidents.record.incidents()
        weeks = Counter()
        for incident in found:
            weeks[incident.first_seen.isocalendar().week] += 1
        alerts_by_week = Counter(datetime.fromisoformat(a["time"]).isocalendar().week for a in sent)
        weeks_judged = len({r.end.isocalendar().week for r in reports})
        print(f"\n{name}: {len(reports)} windows judged, {weeks_judged} weeks")
        print(
            f"  alerts {len(sent)}, incidents {len(found)} "
            f"({len(found) / max(weeks_judged, 1):.2f} per week; "
            f"{len(sent) / max(weeks_judged, 1):.2f} alerts per week)"
        )
        for week in sorted(set(weeks) | set(alerts_by_week)):
            print(f"  ISO week {week}: {alerts_by_week[week]:3d} alerts -> {weeks[week]} incidents")
        for incident in found:
            print(
                f"  [{incident.severity}] {incident.state:8s} {incident.first_seen:%m-%d}.."
                f"{incident.last_seen:%m-%d} {incident.cause}"
            )
    print(f"\nwork folder: {work}")


if __name__ == "__main__":
    main()
