"""Incidents on the example project: a source that goes stale during a replayed week moves
every feature it feeds; the monitors raise one alert per moved feature, the incidents make one
of them, named after the source (the feature-to-source map read from the Feast views)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DAILY_WINDOWS, copy_project, utc
from tests.unit.test_alerts import Receiver

pytestmark = pytest.mark.integration


class Stale:
    """The online store with the rows of ``features`` a day old: past their view's TTL, so
    the request path serves its fallbacks, as when a source stops arriving."""

    def __init__(self, store: Any, features: set[str]) -> None:
        self.store, self.features = store, features

    def online_records(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        records = self.store.online_records(rows)
        for record in records:
            for name in self.features:
                if record.get(f"{name}__ts"):
                    record[f"{name}__ts"] -= 86_400
        return records


def test_a_stale_source_is_one_incident_naming_it(drilled: Path, tmp_path: Path) -> None:
    from prodguard import app, wiring
    from prodguard.clock import FixedClock
    from prodguard.config import load_settings
    from prodguard.monitoring.jobs import alert_gate, build_monitor, replay_version, run_monitor
    from prodguard.serving.prediction_log import SqlitePredictionLog

    root = copy_project(drilled, tmp_path / "project")
    receiver = Receiver()
    try:
        environ = {**DAILY_WINDOWS, "PRODGUARD_ALERTS__WEBHOOK_URL": receiver.url}
        settings = load_settings(root / "prodguard.yaml", environ=environ)
        store = wiring.feature_store(settings)
        store.materialize(until=utc("2013-05-01"))
        views = store.versions()
        # the source the model's entity rows do not come from, with the most features
        stale = max(
            (v for v in views if not settings.sources[v.source].static),
            key=lambda v: len(v.features),
        )
        features = {name for name, _ in stale.features}
        log = SqlitePredictionLog(settings.paths.prediction_log, "NORMAL")
        registry = wiring.registry_operations(settings).registry
        replay_version(
            settings,
            registry,
            2,
            utc("2013-04-04"),
            utc("2013-04-08"),
            log,
            wrap_store=lambda online, clock: Stale(online, features),
        )
        monitor = build_monitor(settings, FixedClock(utc("2013-04-08")), log)
        gate = alert_gate(settings)
        run = run_monitor(monitor, gate, start=utc("2013-04-04"), end=utc("2013-04-08"))
        opened = app.incidents(settings)
        heard = list(receiver.bodies)

        # the source arrives again; days judged clear clear their conditions in the incident,
        # which stays open while the others hold (their weather moved from the staging week's)
        replay_version(settings, registry, 2, utc("2013-04-08"), utc("2013-04-11"), log)
        monitor = build_monitor(settings, FixedClock(utc("2013-04-11")), log)
        after = run_monitor(monitor, gate, start=utc("2013-04-08"), end=utc("2013-04-11"))
        gate.alerter.sweep(utc("2013-04-13"))
        log.close()
    finally:
        receiver.close()

    drifted = {a.metric.split(".", 1)[1] for a in run.sent if a.type == "drift_alert" and a.metric}
    assert len(drifted & features) >= 3, drifted  # one alert per moved feature...
    (source,) = [i for i in opened if i["cause_key"] == f"source:{stale.source}"]
    # ...one incident for all of them, named after the source
    assert source["members"] >= len(drifted & features) and source["state"] == "open"
    assert source["cause"].startswith(f"source '{stale.source}' (model v2): drift in ")
    stale_metrics = {f"{family}.{name}" for family in ("psi", "shift") for name in features}
    sent_metrics = {a.metric for a in run.sent if a.metric}
    assert set(source["metrics"]) == sent_metrics & stale_metrics
    assert source["first_seen"] == "2013-04-08T00:00:00+00:00"
    # the webhook heard of incidents, not of alerts: an opening (and an escalation) each
    assert len(opened) < len(run.sent)
    events = [(b["prodguard"]["event"], b["prodguard"]["incident"]["id"]) for b in heard]
    assert ("opened", source["id"]) in events and len(events) <= 2 * len(opened)
    assert {e for e, _ in events} <= {"opened", "escalated"}

    cleared = {a.metric for a in after.sent if a.type == "resolved"} & set(source["metrics"])
    assert cleared, after.sent
    (now,) = [i for i in app.incidents(settings) if i["id"] == source["id"]]
    assert now["state"] == "open" and now["conditions"]
    assert not {f"{metric}|v2" for metric in cleared} & set(now["conditions"])
    assert set(now["conditions"]) < set(source["conditions"])
    everything = [
        (b["prodguard"]["event"], b["prodguard"]["incident"]["id"]) for b in receiver.bodies
    ]
    assert everything.count(("opened", source["id"])) == 1  # not opened again
    assert ("resolved", source["id"]) not in everything
    # incidents whose every condition cleared did resolve, each once
    resolved = [i for event, i in everything if event == "resolved"]
    assert len(resolved) == len(set(resolved))
    assert {i["id"] for i in app.incidents(settings) if i["state"] == "resolved"} == set(resolved)
