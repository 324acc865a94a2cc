"""The flights project's demo story: 2013 played through prodguard, every failure mode shown.

1. January–April ingested; v1 trained on January–March, baselined on April in staging, drilled,
   promoted.
2. May–June served through the HTTP endpoint, hour by hour, outcomes fed back as flights land.
3. v2 trained on January–May, rolled out as a canary step by step, promoted by the guard;
   v1 becomes the standby.
4. July: the weather provider switches to degrees Celsius; the batch is quarantined, serving
   keeps the last good weather (flagged) until the corrected batch arrives.
5. Autumn: weather far from what the models saw; PSI alerts and an Evidently report.
6. A faulty v3 is promoted with the CLI; its prediction shift fires the guard: rolled back to v2.

``short`` plays the same chapters on fewer days (the tests' version).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd

from prodguard.demo.runner import DemoRun
from prodguard_flights.loader import FlightsLoader


def day(text: str) -> datetime:
    return pd.Timestamp(text, tz="UTC").to_pydatetime()


@dataclass(frozen=True)
class Calendar:
    served_v1: tuple[str, str]  # v1 alone
    v2_trained: tuple[str, str]  # training window of v2; the fortnight after it, its staging
    canary: tuple[str, str]  # v2 rolled out as a canary, baked, promoted
    celsius: tuple[str, str, str]  # start, corrected batch arrives, end
    autumn: tuple[str, str]
    faulty: tuple[str, str]


DAILY = 24

FULL = Calendar(
    served_v1=("2013-05-01", "2013-06-01"),
    v2_trained=("2013-01-01", "2013-05-18"),
    canary=("2013-06-01", "2013-06-12"),
    celsius=("2013-07-01", "2013-07-03", "2013-07-05"),
    autumn=("2013-10-01", "2013-10-11"),
    faulty=("2013-10-11", "2013-10-12"),
)
SHORT = Calendar(
    served_v1=("2013-05-01", "2013-05-06"),
    v2_trained=("2013-01-01", "2013-04-22"),
    canary=("2013-05-06", "2013-05-14"),
    celsius=("2013-07-01", "2013-07-02", "2013-07-03"),
    autumn=("2013-10-01", "2013-10-03"),
    faulty=("2013-10-03", "2013-10-04"),
)


class FlightsStory:
    environment = {
        # daily windows: a simulated day passes in about a second
        "PRODGUARD_MONITORING__WINDOW__MINUTES": "1440",
        "PRODGUARD_MONITORING__WINDOW__STEP_MINUTES": "1440",
        "PRODGUARD_MONITORING__WINDOW__MIN_ROWS": "300",
        "PRODGUARD_MONITORING__KPI__MATURITY_HOURS": "6",
        "PRODGUARD_MONITORING__KPI__MIN_LABELLED": "100",
        "PRODGUARD_MODEL__EVALUATION_DAYS": "7",
        "PRODGUARD_SERVING__POLL_SECONDS": "0.25",
        "PRODGUARD_SERVING__LOG_SYNC": "NORMAL",
        "PRODGUARD_SERVING__FALLBACK": "last_good",
        "PRODGUARD_ROLLOUT__CANARY_STEPS": "[25, 50, 100]",
        # the guard judges whole days, as the daily baselines were measured (a partial day's
        # mean score differs from a whole day's by its hours' mix: flights late in the day are
        # delayed more); after the CLI promotion it checks every hour
        "PRODGUARD_ROLLOUT__BAKE_MINUTES": "1440",
        "PRODGUARD_ROLLOUT__BAKE_MIN_REQUESTS": "150",
        "PRODGUARD_ROLLOUT__GUARD_MINUTES": "1440",
        "PRODGUARD_ROLLOUT__TRIGGERS__MIN_REQUESTS": "150",
        # two cores are shared by the service, the replay driver and the guard: a p99 over the
        # few single requests a canary step sees is its slowest one
        "PRODGUARD_ROLLOUT__TRIGGERS__P99_LATENCY_MS": "1000",
    }
    outcome_hours = 6.0  # every flight has landed six hours after its departure
    # one request in 33 goes alone: the latency triggers judge single requests, at least 20 in
    # a window, so a canary step at 25 % gathers them in about three days
    single_share = 0.03

    def play(self, run: DemoRun, short: bool) -> None:
        dates = SHORT if short else FULL
        first = day(dates.served_v1[0])
        run.at(first)
        with run.chapter("1. January–April: ingest, train v1, baseline it in staging, drill"):
            run.ingest(day("2013-01-01"), first)
            run.materialize(first)
            v1 = run.train(day("2013-01-01"), day("2013-04-01"))
            run.baseline(day("2013-04-08"), day("2013-04-22"), v1)
            run.drill(v1)
            run.promote(v1, "demo: first champion")

        with run.chapter("2. May–June through the HTTP endpoint, outcomes fed back"):
            run.ingest(first, day("2013-07-01"))
            run.start_service(features_since=first)
            run.serve(first, day(dates.served_v1[1]), "v1", guard_every_hours=DAILY)

        start, end = (day(d) for d in dates.canary)
        run.at(start)
        trained = [day(d) for d in dates.v2_trained]
        with run.chapter("3. v2 trained on January–May, canary with baking, promoted by the guard"):
            v2 = run.train(*trained)
            run.baseline(trained[1], trained[1] + pd.Timedelta(days=14), v2)  # held-out fortnight
            run.start_rollout("canary", [25, 50, 100])
            run.serve(start, end, "canary of v2", guard_every_hours=DAILY)

        begin, fixed, end = (day(d) for d in dates.celsius)
        run.at(begin)
        with run.chapter("4. The weather provider switches to °C: quarantine, last good values"):
            run.ingest(begin, day("2013-08-01"), ["flights", "carrier_stats"])
            run.ingest_file("weather", self._celsius_batch(run, begin, fixed))
            run.serve(begin, fixed, "on last good weather", guard_every_hours=DAILY)
            run.ingest(begin, day("2013-08-01"), ["weather"])  # the corrected delivery
            run.serve(fixed, end, "weather restored", guard_every_hours=DAILY)

        start, end = (day(d) for d in dates.autumn)
        run.at(start)
        with run.chapter("5. Autumn: weather the models never saw, drift alerts and a report"):
            run.ingest(start, day("2013-11-01"))
            run.serve(start, end, "autumn", guard_every_hours=DAILY)
            run.drift_report(max(start, end - pd.Timedelta(days=7)), end)

        start, end = (day(d) for d in dates.faulty)
        run.at(start)
        with run.chapter("6. A faulty v3 is promoted from the CLI: the guard rolls it back"):
            v3 = run.register_faulty(run.champion(), 0.4)
            run.figures["promote_cli_seconds"] = round(
                run.promote_as_user(v3, "v3 looks great offline"), 1
            )
            run.serve(start, end, "v3 promoted", guard_every_hours=1)

    @staticmethod
    def _celsius_batch(run: DemoRun, start: datetime, end: datetime) -> Path:
        """The provider's delivery for [start, end) with temperature and dew point in °C."""
        batch = FlightsLoader().load("weather", start, end)
        for column in ("temp", "dewp"):
            batch[column] = ((batch[column] - 32) * 5 / 9).round(1)
        folder = run.output / "upstream"
        folder.mkdir(exist_ok=True)
        path = folder / f"weather_{start:%Y%m%d}_celsius.parquet"
        batch.to_parquet(path, index=False)
        return path


story = FlightsStory()
