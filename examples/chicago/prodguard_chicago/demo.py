"""The Chicago project's demo story (``prodguard --config prodguard.yaml demo``): years of one
request a day, ridership drifting upwards, a faulty version rolled back.

1. 2012 ingested; v1 trained on January to September 2012 (prodguard's trainer), baselined on
   the last quarter of 2012 in staging, promoted.
2. 2013-2014 (short: its first quarter) served through the HTTP endpoint, a request a day, each
   day's entries fed back the next day; the monitors judge four-week windows: weather and the
   network's entries drift from the staging quarter (PSI alerts); an Evidently report.
3. A faulty v2 (v1's values shifted) is promoted from the CLI; the guard rolls it back to v1.

``short`` plays the same chapters on fewer months.
"""

from __future__ import annotations

from datetime import datetime

import pandas as pd

from prodguard.demo.runner import DemoRun

WEEKLY = 24 * 7


def day(text: str) -> datetime:
    return pd.Timestamp(text, tz="UTC").to_pydatetime()


class ChicagoStory:
    environment = {
        "PRODGUARD_SERVING__POLL_SECONDS": "0.25",
        "PRODGUARD_SERVING__LOG_SYNC": "NORMAL",
    }
    outcome_hours = 24.0  # a day's entries are known the next day
    single_share = 1.0  # one request a day: each one goes alone, as /predict

    def play(self, run: DemoRun, short: bool) -> None:
        first, served_until = (
            ("2013-01-01", "2013-04-01") if short else ("2013-01-01", "2015-01-01")
        )
        start, end = day(first), day(served_until)
        run.at(start)
        with run.chapter("1. 2012: ingest, train v1, baseline it in staging, promote"):
            run.ingest(day("2012-01-01"), start)
            run.materialize(start)
            v1 = run.train(day("2012-01-01"), day("2012-10-01"))
            run.baseline(day("2012-10-01"), start, v1)
            run.promote(v1, "demo: first champion")

        with run.chapter(f"2. {first[:4]}-{served_until[:4]}: a request a day, entries drift"):
            run.ingest(start, end)
            run.start_service(features_since=start)
            run.serve(start, end, "v1", guard_every_hours=WEEKLY)
            run.drift_report(end - pd.Timedelta(days=28), end)

        faulty_end = end + pd.Timedelta(days=42)
        with run.chapter("3. A faulty v2 is promoted from the CLI: the guard rolls it back"):
            run.ingest(end, faulty_end)
            v2 = run.register_faulty(run.champion(), 1.0)  # +1 baseline sd
            run.promote_as_user(v2, "v2 looks great offline")
            run.serve(end, faulty_end, "v2 promoted", guard_every_hours=24)


story = ChicagoStory()
