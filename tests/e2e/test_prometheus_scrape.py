"""A real Prometheus (Debian's ``prometheus`` 2.42 binary) scrapes a running ``prodguard serve``
replica and the ``prodguard monitor`` loop and evaluates the stack's own alert rules, while a user
causes trouble through the CLI and the HTTP API:

- the scrape config is ``deploy/prometheus/prometheus.yml`` with only the targets (free local
  ports; replica a only, replica b is not started), the scrape and evaluation intervals (1 s
  instead of 15 s) and the rule file's path changed;
- the rules are ``deploy/prometheus/alerts.yml`` with ONLY each rule's ``for:`` set to ``0s``
  (derived by :func:`rules_for_the_test`; a test cannot wait the 5 minutes of ProdguardShedding):
  every expression, label and annotation is the real one;
- a user promotes the faulty v3 (v2's scores shifted by +0.4) with ``prodguard promote`` while a
  client sends predictions: the monitor loop judges v3's window critical and Prometheus fires
  ProdguardMetricCritical and ProdguardCriticalAlertRaised;
- a burst of concurrent requests beyond ``serving.max_in_flight`` makes the replica refuse some
  with 429: Prometheus fires ProdguardShedding for replica a;
- every metric the Grafana dashboard and the alert rules query is one the replica's or the
  monitor's real ``/metrics`` page declares (or one Prometheus makes itself), and every panel's
  query returns data from this Prometheus (but the KPI's: no outcomes are sent).

The tests share one running system and run in file order (the last ones see what the promotion
and the burst left).

Without the ``prometheus`` binary this module fails under CI (``.ci/run`` installs it) and is
skipped elsewhere, with the command that installs it.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import (
    DAILY_WINDOWS,
    FLIGHT_REQUEST,
    ROOT,
    copy_project,
    debian_binary,
    utc,
)
from tests.e2e.cli import CLI, free_port, get_json, run, serving
from tests.e2e.test_production import stop, wait_http
from tests.e2e.test_serving_http import post
from tests.integration.test_alert_rules import _dashboard_queries
from tests.unit.test_compose import PROMETHEUS_SERIES, _dashboard, _dashboard_exprs, promql_metrics

pytestmark = pytest.mark.e2e
DEPLOY = ROOT / "deploy" / "prometheus"
MAX_IN_FLIGHT = 2
ENV = {
    **DAILY_WINDOWS,
    "PRODGUARD_MONITORING__WINDOW__MIN_ROWS": "20",  # a few seconds of one client's traffic
    "PRODGUARD_SERVING__POLL_SECONDS": "1",
    "PRODGUARD_SERVING__MAX_IN_FLIGHT": str(MAX_IN_FLIGHT),
}


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    return debian_binary("prometheus")


def rules_for_the_test() -> dict[str, Any]:
    """deploy/prometheus/alerts.yml with every rule's ``for:`` set to 0s, nothing else changed."""
    rules = yaml.safe_load((DEPLOY / "alerts.yml").read_text(encoding="utf-8"))
    derived = copy.deepcopy(rules)
    for group in derived["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "0s"
    return derived


def config_for_the_test(targets: dict[str, str], rule_file: Path) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with local targets (job -> host:port; the first target
    of each job, with its labels), 1 s intervals and the test's rule file."""
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text(encoding="utf-8"))
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(rule_file)]
    for job in config["scrape_configs"]:
        first = job["static_configs"][0]
        job["static_configs"] = [{**first, "targets": [targets[job["job_name"]]]}]
    return config


def test_the_derived_rules_differ_from_the_real_ones_only_in_for() -> None:
    real = yaml.safe_load((DEPLOY / "alerts.yml").read_text(encoding="utf-8"))
    derived = rules_for_the_test()
    pairs = [
        (a, b)
        for g, h in zip(real["groups"], derived["groups"], strict=True)
        for a, b in zip(g["rules"], h["rules"], strict=True)
    ]
    assert any("for" in a for a, _ in pairs)
    for a, b in pairs:
        assert {k: v for k, v in a.items() if k != "for"} == {
            k: v for k, v in b.items() if k != "for"
        }
        assert ("for" in a) == ("for" in b) and b.get("for", "0s") == "0s"


class Client:
    """Sends /predict to the replica one request at a time until stopped, cycling through
    requests about rows of the four weeks before the online store's time (the benchmark's
    workload), each with a request id of its own."""

    def __init__(self, base: str, bodies: list[dict[str, Any]]) -> None:
        self.base, self.bodies = base, bodies
        self.answers: list[tuple[int, int | None]] = []  # status, version
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self.stop.is_set():
            body = {**self.bodies[n % len(self.bodies)], "request_id": f"client-{n}"}
            n += 1
            status, answer = post(self.base, "/predict", body)
            version = answer.get("version") if isinstance(answer, dict) else None
            self.answers.append((status, version))
            time.sleep(0.01)

    def served(self, version: int) -> int:
        return sum(1 for status, v in self.answers if status == 200 and v == version)


def april_requests(settings: Any, count: int) -> list[dict[str, Any]]:
    """``count`` request bodies about flights of the four weeks before the online store's time
    (:func:`prodguard.bench.workload.guarded_bodies`, categories the champion knows)."""
    from prodguard import wiring
    from prodguard.bench.workload import guarded_bodies
    from prodguard.registry.lineage import REFERENCE_STATS_JSON

    registry = wiring.registry_operations(settings).registry
    stats = registry.load_json_artifact(registry.aliases()["champion"], REFERENCE_STATS_JSON)
    categories = {
        name: frozenset(s.get("categories", {}))
        for name, s in stats.items()
        if s.get("kind") == "categorical"
    }
    at = wiring.feature_store(settings).materialized_until()
    return guarded_bodies(settings, at, count, categories, "april-")


@dataclass
class System:
    project: Path
    replica: str  # base URL of `prodguard serve`
    monitor: str  # base URL of the monitor loop's metrics
    prometheus: str  # base URL of Prometheus
    client: Client  # one client sending /predict one request at a time

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        document = get_json(f"{self.prometheus}/api/v1/{path}{query}")
        assert document["status"] == "success", document
        return document["data"]

    def firing(self) -> list[dict[str, Any]]:
        return [a for a in self.api("alerts")["alerts"] if a["state"] == "firing"]

    def wait_firing(self, name: str, seconds: float = 90) -> list[dict[str, Any]]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            found = [a for a in self.firing() if a["labels"]["alertname"] == name]
            if found:
                return found
            time.sleep(0.5)
        rules = [r for g in self.api("rules")["groups"] for r in g["rules"]]
        states = {r["name"]: (r["state"], r.get("lastError")) for r in rules}
        raise AssertionError(f"{name} did not fire within {seconds:g} s; rules: {states}")


@pytest.fixture(scope="module")
def system(
    drilled: Path, tmp_path_factory: pytest.TempPathFactory, prometheus_binary: str
) -> Iterator[System]:
    """The drilled project (v2 champion, v1 standby, faulty v3 registered) served by one replica,
    watched by the monitor loop (every second, gauges on a free port) and by Prometheus."""
    from prodguard import wiring
    from prodguard.config import load_settings

    began = time.monotonic()
    tmp = tmp_path_factory.mktemp("prometheus")
    project = copy_project(drilled, tmp / "project")
    settings = load_settings(project / "prodguard.yaml", environ=ENV)
    wiring.feature_store(settings).materialize(until=utc("2013-05-01"))

    monitor_port, prometheus_port = free_port(), free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PRODGUARD_")}
    monitor = subprocess.Popen(
        [*CLI, "monitor", "--every", "1", "--metrics-port", str(monitor_port), "--json"],
        cwd=project,
        env={**clean, **ENV},
        stdout=(project / "monitor.jsonl").open("w"),
        stderr=(project / "monitor.log").open("w"),
        start_new_session=True,
    )
    bodies = april_requests(settings, 500)
    prometheus = None
    try:
        with serving(project, ENV) as replica:  # meanwhile the monitor loop starts
            rule_file = tmp / "alerts.yml"
            rule_file.write_text(yaml.safe_dump(rules_for_the_test()), encoding="utf-8")
            targets = {
                "prodguard-serve": replica.removeprefix("http://"),
                "prodguard-monitor": f"127.0.0.1:{monitor_port}",
                "prometheus": f"127.0.0.1:{prometheus_port}",
            }
            config = tmp / "prometheus.yml"
            config.write_text(yaml.safe_dump(config_for_the_test(targets, rule_file)), "utf-8")
            prometheus = subprocess.Popen(
                [
                    prometheus_binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prometheus_port}",
                ],
                cwd=tmp,
                stdout=subprocess.DEVNULL,
                stderr=(tmp / "prometheus.log").open("w"),
                start_new_session=True,
            )
            base = f"http://127.0.0.1:{prometheus_port}"
            wait_http(f"{base}/-/ready", prometheus, tmp / "prometheus.log", seconds=60)
            wait_http(f"http://127.0.0.1:{monitor_port}/metrics", monitor, project / "monitor.log")
            client = Client(replica, bodies)
            client.thread.start()
            print(f"\n[prometheus] system up in {time.monotonic() - began:.0f} s")
            try:
                yield System(project, replica, f"http://127.0.0.1:{monitor_port}", base, client)
            finally:  # before the replica stops
                client.stop.set()
                client.thread.join(timeout=30)
    finally:
        for process in (prometheus, monitor):
            if process is not None:
                stop(process)


def test_prometheus_scrapes_the_replica_and_the_monitor_loop(system: System) -> None:
    deadline = time.monotonic() + 60
    while True:
        targets = system.api("targets")["activeTargets"]
        health = {t["labels"]["job"]: t["health"] for t in targets}
        if set(health.values()) == {"up"} or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    errors = {t["labels"]["job"]: t["lastError"] for t in targets}
    assert health == {"prodguard-serve": "up", "prodguard-monitor": "up", "prometheus": "up"}, (
        errors
    )
    (serve,) = [t for t in targets if t["labels"]["job"] == "prodguard-serve"]
    assert serve["labels"]["replica"] == "a"  # the label the rules and the dashboard group by
    up = system.api("query", query="up")["result"]
    assert {r["metric"]["job"]: r["value"][1] for r in up} == {
        "prodguard-serve": "1",
        "prodguard-monitor": "1",
        "prometheus": "1",
    }
    # every rule of the real file is loaded and evaluates without error
    rules = [r for g in system.api("rules")["groups"] for r in g["rules"]]
    real = rules_for_the_test()
    assert {r["name"] for r in rules} == {r["alert"] for g in real["groups"] for r in g["rules"]}
    assert all(r["health"] != "err" for r in rules), [r.get("lastError") for r in rules]
    # nothing that means "down" fires while everything runs
    down = {"ProdguardReplicaDown", "ProdguardNoReplicaUp", "ProdguardMonitorDown"}
    down.add("ProdguardMonitorStale")
    assert not {a["labels"]["alertname"] for a in system.firing()} & down


def v3_score_alerts(alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        a
        for a in alerts
        if a["labels"]["alertname"] == "ProdguardMetricCritical"
        and a["labels"]["model_version"] == "3"
        and a["labels"]["metric"].startswith("score.")
    ]


def test_a_faulty_promotion_fires_the_monitor_rules(system: System) -> None:
    """The monitor judges the test's traffic against a staging baseline recorded on replayed
    April days: some of v2's metrics (latencies on this busy machine, scores of requests all
    asked at one minute) are critical too, before any promotion. What only the faulty promotion
    can cause is an alert of v3, whose scores are v2's plus 0.4."""
    client = system.client
    deadline = time.monotonic() + 60
    while client.served(2) < 40:
        assert time.monotonic() < deadline, "v2 did not answer 40 requests"
        time.sleep(0.2)
    assert not v3_score_alerts(system.firing())  # v3 never served yet
    # a user promotes the faulty v3 with the CLI (its standby v1 is young: override, audited)
    run(system.project, "promote", "--version", "3", "--reason", "faulty on purpose",
        "--override-standby-retention", "prometheus test", env=ENV)  # fmt: skip

    deadline = time.monotonic() + 120
    while not (fired := v3_score_alerts(system.firing())):
        assert time.monotonic() < deadline, f"no score alert of v3: {system.firing()}"
        time.sleep(0.5)
    assert client.served(3) >= 20  # the window's min_rows
    for alert in fired:
        labels = alert["labels"]
        assert labels["severity"] == "critical" and labels["job"] == "prodguard-monitor"
        assert labels["instance"] == system.monitor.removeprefix("http://")
        summary = f"{labels['metric']} of model version 3 is critical"
        assert alert["annotations"]["summary"] == summary
    # what Prometheus scraped: v3's mean score is v2's plus the fault's 0.4 (on other requests
    # of the same workload; probabilities clip at 1)
    values = system.api("query", query='prodguard_monitor_value{metric="score.mean"}')["result"]
    mean = {r["metric"]["model_version"]: float(r["value"][1]) for r in values}
    assert 0.25 < mean["3"] - mean["2"] <= 0.41, mean
    # the monitor alerted it once (its prodguard_alerts_total counts what it sent): the rule
    # over that counter fires with the alert's type
    raised = system.wait_firing("ProdguardCriticalAlertRaised", seconds=30)
    assert all(a["labels"]["severity"] == "critical" for a in raised)
    stored = run(system.project, "alerts", env=ENV).stdout.splitlines()
    sent = [a for a in map(json.loads, stored) if a["source"] == "monitor"]
    of_v3 = [
        a
        for a in sent
        if a["severity"] == "critical"
        and a.get("model_version") == 3
        and a.get("metric", "").startswith("score.")
    ]
    assert of_v3, sent
    wanted = {a["type"] for a in of_v3}  # v2's own critical alerts may have fired it first
    deadline = time.monotonic() + 60
    while not wanted <= {a["labels"]["type"] for a in raised}:
        assert time.monotonic() < deadline, f"never fired for {wanted}: {raised}"
        time.sleep(0.5)
        raised = system.wait_firing("ProdguardCriticalAlertRaised", seconds=30)
    print(
        f"\n[prometheus] faulty v3 promoted ({client.served(2)} answers of v2, "
        f"{client.served(3)} of v3): ProdguardMetricCritical for v3's "
        f"{sorted(a['labels']['metric'] for a in fired)} (score.mean v2 {mean['2']:.3f}, "
        f"v3 {mean['3']:.3f}), ProdguardCriticalAlertRaised for "
        f"{sorted(a['labels']['type'] for a in raised)}"
    )


def test_a_burst_beyond_max_in_flight_fires_shedding(system: System) -> None:
    statuses: list[int] = []
    stop_burst = threading.Event()

    def burst(n: int) -> None:
        k = 0
        while not stop_burst.is_set():
            k += 1
            body = {**FLIGHT_REQUEST, "request_id": f"burst-{n}-{k}"}
            statuses.append(post(system.replica, "/predict", body)[0])

    threads = [threading.Thread(target=burst, args=(n,), daemon=True) for n in range(6)]
    for thread in threads:
        thread.start()
    try:
        fired = system.wait_firing("ProdguardShedding", seconds=60)
    finally:
        stop_burst.set()
        for thread in threads:
            thread.join(timeout=30)
    assert 429 in statuses and set(statuses) <= {200, 429}, set(statuses)
    (alert,) = fired
    assert alert["labels"]["replica"] == "a" and alert["labels"]["severity"] == "warning"
    assert alert["labels"]["alertname"] == "ProdguardShedding"
    assert alert["annotations"]["summary"] == "prodguard replica a sheds load (429)"
    refused = system.api(
        "query", query='sum(prodguard_refused_total{reason="concurrency",replica="a"})'
    )["result"]
    assert float(refused[0]["value"][1]) > 0
    print(
        f"\n[prometheus] burst of 6 clients, serving.max_in_flight {MAX_IN_FLIGHT}: "
        f"{statuses.count(429)} of {len(statuses)} refused (429), ProdguardShedding fired"
    )


def declared_series(url: str) -> set[str]:
    """The series names a /metrics page declares (every family, with or without samples yet)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        if family.type == "counter":
            names |= {f"{family.name}_total", f"{family.name}_created"}
        elif family.type in ("histogram", "summary"):
            names |= {f"{family.name}{s}" for s in ("_bucket", "_count", "_sum", "_created")}
        else:
            names.add(family.name)
        names |= {sample.name for sample in family.samples}
    return names


def test_dashboard_and_rules_query_only_metrics_the_processes_expose(system: System) -> None:
    exposed = declared_series(f"{system.replica}/metrics")
    exposed |= declared_series(f"{system.monitor}/metrics")
    exposed |= PROMETHEUS_SERIES
    real = yaml.safe_load((DEPLOY / "alerts.yml").read_text(encoding="utf-8"))
    queries = {f"rule {r['alert']}": r["expr"] for g in real["groups"] for r in g["rules"]}
    queries |= {f"dashboard: {e}": e for e in _dashboard_exprs(_dashboard())}
    used: set[str] = set()
    for where, expr in queries.items():
        names = promql_metrics(expr)
        assert names, where
        assert not names - exposed, f"{where}: not exposed: {sorted(names - exposed)}"
        used |= names
    # and what Prometheus really ingested from them: every queried series with samples so far
    ingested = set(system.api("label/__name__/values"))
    assert {"prodguard_predictions_total", "prodguard_stage_seconds_bucket"} <= ingested
    assert {"bentoml_service_request_total", "prodguard_monitor_status", "up"} <= ingested
    print(
        f"\n[prometheus] {len(queries)} rule and dashboard queries name {len(used)} series, all "
        f"exposed; {len(used & ingested)} of them have samples in Prometheus"
    )


def test_every_dashboard_panel_query_returns_data(system: System) -> None:
    """Each panel's query, its variables filled as Grafana fills them, run against the real
    Prometheus after the module's events (the tests run in file order: the faulty promotion and
    the burst made the alerts, swaps and refusals the panels show). Empty answers would mean a
    wrong label name or value (``replica``, ``stage="total"``, ``role``, a metric's name)."""
    replicas = system.api("query", query='up{job="prodguard-serve"}')["result"]  # $replica
    assert {r["metric"]["replica"] for r in replicas} == {"a"}
    empty = []
    for query in _dashboard_queries():
        result = system.api("query", query=query.replace('replica=~".*"', 'replica=~"a"'))
        if not result["result"]:
            empty.append(query)
    # may be empty: the business KPI (this test sends no outcomes, so no window has matured
    # feedback) and degraded lookups (a labelled counter has no series before its first one)
    allowed = ('metric=~"kpi', "prodguard_degradations_total")
    assert [q for q in empty if not any(a in q for a in allowed)] == [], empty
    print(f"\n[prometheus] {len(_dashboard_queries()) - len(empty)} dashboard queries answer")
