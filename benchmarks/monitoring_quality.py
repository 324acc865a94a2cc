"""How well the monitors detect, on the flights replay of 2013 (prints figures; asserts nothing).

1. False alarms: April (the month after training) is split by request id into two halves of
   equal size; the baseline is taken on one half, the monitors run on the other.
2. Seasonal drift: v1 (trained Jan-Mar, baselined on April) serves May-November unchanged;
   first warning/critical window per weather feature.
3. Unit change: from April 15 the feature source serves temperature and dew point in degrees
   Celsius to the held-out half; detection delay in days (windows end daily).

Run: .venv/bin/python benchmarks/monitoring_quality.py [--work DIR] [--quick]
(``--quick``: drift study on May-July only). Takes several minutes: each month replays ~28k
requests through the serving path.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from replay_project import half, replayer, trained_project

WEATHER = ["temp", "dewp", "humid", "pressure", "wind_speed", "precip", "visib"]


class Celsius:
    """Serves temperature and dew point in degrees Celsius from ``since`` on."""

    def __init__(self, store: Any, clock_now: Any, since: pd.Timestamp) -> None:
        self.store, self.now, self.since = store, clock_now, since

    def online_records(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        records = self.store.online_records(rows)
        if pd.Timestamp(self.now()) >= self.since:
            for record in records:
                for column in ("temp", "dewp"):
                    value = record[column]
                    record[column] = None if value is None else (value - 32) * 5 / 9
        return records

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()

    from prodguard.clock import FixedClock
    from prodguard.monitoring.jobs import baseline_from_log, replay_version, version_reference
    from prodguard.monitoring.monitor import Monitor, VersionReference
    from prodguard.serving.prediction_log import SqlitePredictionLog
    from prodguard.telemetry import disable_telemetry
    from prodguard.timewindows import parse_time as t

    disable_telemetry()
    work = args.work or Path(tempfile.mkdtemp(prefix="prodguard-quality-"))
    settings, registry, version = trained_project(
        work, (t("2013-01-01"), t("2014-01-01")), (t("2013-01-01"), t("2013-04-01")), "quality"
    )
    reference = version_reference(registry, version)
    replayed = replayer(work, settings, registry, version)

    def monitor_over(log: Any, baseline: Any, start: Any, end: Any) -> list[Any]:
        clock = FixedClock(end + timedelta(days=2))
        monitor = Monitor(
            log,
            lambda _: VersionReference(reference.features, baseline),
            settings.monitoring,
            clock,
        )
        return monitor.over(start, end)

    # 1. false alarms on a held-out half of the staging month
    april, may = t("2013-04-01"), t("2013-05-01")
    began = time.perf_counter()
    half_log = replayed("staging_half", april, may, keep=half)
    fitted = baseline_from_log(settings, half_log, version, april, may, reference)
    held_log = replayed("held_out", april, may, keep=lambda r: not half(r))
    reports = monitor_over(held_log, fitted, april, may)
    print(
        f"\n1. held-out half of April ({time.perf_counter() - began:.0f} s): {len(reports)} windows"
    )
    _summarise_alarms(reports)

    # the full April baseline for the drift studies
    baseline = baseline_from_log(
        settings, replayed("staging", april, may), version, april, may, reference
    )
    print(
        f"\nbaseline v{version} on April: {baseline.rows} predictions, "
        f"{baseline.details['windows']} windows"
    )
    for name in (
        "psi.temp",
        "shift.temp",
        "psi.dewp",
        "shift.dewp",
        "score.mean",
        f"kpi.{settings.monitoring.kpi.name}",
    ):
        m = baseline.metrics.get(name)
        if m is not None:
            print(
                f"  {name:22s} mean {m.mean:.4f} sd {m.sd:.4f} spread {m.max_deviation:.4f} "
                f"({m.windows} windows)"
            )

    # 2. seasonal drift: v1 serves May..November (or July with --quick)
    end = t("2013-08-01") if args.quick else t("2013-12-01")
    began = time.perf_counter()
    live = SqlitePredictionLog(work / "production.db", "NORMAL")
    served = replay_version(settings, registry, version, may, end, live, single_share=0.0)
    reports = monitor_over(live, baseline, may, end)
    print(
        f"\n2. seasonal drift, May..{end:%b} ({served.predicted} predictions, "
        f"{time.perf_counter() - began:.0f} s): {len(reports)} windows"
    )
    for feature in WEATHER:
        _first(reports, f"psi.{feature}")
        _first(reports, f"shift.{feature}")
    _first(reports, "score.mean")
    _first(reports, f"kpi.{settings.monitoring.kpi.name}")
    _by_month(reports, ["psi.temp", "shift.temp", "shift.dewp"])

    # 3. a unit change on April 15, on the held-out half (judged against the other half's
    # baseline, so that no seasonal drift mixes in)
    change = pd.Timestamp("2013-04-15", tz="UTC")
    began = time.perf_counter()
    faulty = replayed(
        "celsius_april",
        april,
        may,
        keep=lambda r: not half(r),
        single_share=0.0,
        wrap_store=lambda store, clock: Celsius(store, clock.now, change),
    )
    reports = monitor_over(faulty, fitted, april, may)
    print(f"\n3. unit change (°C from {change:%Y-%m-%d}), {time.perf_counter() - began:.0f} s")
    for feature in ("psi.temp", "shift.temp", "psi.dewp", "shift.dewp"):
        for report in reports:
            f = report.finding(feature)
            if f is not None and f.alerting and pd.Timestamp(report.end) > change:
                delay = (pd.Timestamp(report.end) - change).total_seconds() / 86400
                print(
                    f"  {feature}: {f.status} in the window ending {report.end:%Y-%m-%d} "
                    f"(PSI {f.value:.2f} > {f.warning:.2f}): "
                    f"detected {delay:.0f} day(s) after the change"
                )
                break
        else:
            print(f"  {feature}: NOT detected")
    print(f"\nwork folder: {work}")


def _summarise_alarms(reports: list[Any]) -> None:
    alarms: dict[str, int] = {}
    for report in reports:
        for f in report.findings:
            if f.alerting:
                alarms[f.metric] = alarms.get(f.metric, 0) + 1
    features = {k: v for k, v in alarms.items() if k.startswith("psi.")}
    print(f"  feature alerts: {sum(features.values())} {features or ''}")
    others = {k: v for k, v in alarms.items() if not k.startswith("psi.")}
    print(f"  other alerts:   {sum(others.values())} {others or ''}")


def _first(reports: list[Any], metric: str) -> None:
    found = {"warning": None, "critical": None}
    for report in reports:
        f = report.finding(metric)
        if f is None:
            continue
        for level in ("warning", "critical"):
            if (
                found[level] is None
                and f.alerting
                and (level == "warning" or f.status == "critical")
            ):
                found[level] = (report.end, f.value)
    text = ", ".join(
        f"{level} from the window ending {hit[0]:%Y-%m-%d} ({hit[1]:.3g})"
        for level, hit in found.items()
        if hit is not None
    )
    print(f"  {metric:22s} {text or 'no alert'}")


def _by_month(reports: list[Any], metrics: list[str]) -> None:
    rows = []
    for report in reports:
        row = {"month": f"{report.end:%Y-%m}"}
        for metric in metrics:
            f = report.finding(metric)
            row[metric] = f.value if f is not None else None
            row[metric + " status"] = f.status if f is not None else None
        rows.append(row)
    frame = pd.DataFrame(rows)
    summary = frame.groupby("month").agg(
        **{f"{m} median": (m, "median") for m in metrics},
        **{
            f"{m} alerting days": (
                m + " status",
                lambda s: int(s.isin(["warning", "critical"]).sum()),
            )
            for m in metrics
        },
    )
    print(summary.round(2).to_string())


if __name__ == "__main__":
    main()
