"""Prometheus itself judges the stack's alert rules and dashboard queries (Debian's `promtool`).

- `promtool check rules` on deploy/prometheus/alerts.yml;
- `promtool test rules` on deploy/prometheus/alerts.test.yml: every rule fires on the series that
  mean trouble, with its labels and rendered annotations, and stays silent before its `for:` has
  passed or on a healthy neighbour (a rule without a test fails here);
- every Grafana dashboard query parses as PromQL (each is checked as a recording rule, with the
  dashboard's variables filled in as Grafana would).

.ci/run installs the `prometheus` package; without `promtool` these tests fail under CI and are
skipped elsewhere (with the command that installs it).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import debian_binary

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "prodguard.json"
# what Grafana substitutes for the dashboard's variables before it sends a query
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$replica": ".*"}


@pytest.fixture(scope="module")
def promtool() -> str:
    return debian_binary("promtool")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=RULES.parent)


def _alert_names() -> set[str]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return {rule["alert"] for group in groups for rule in group["rules"]}


def test_alert_rules_pass_promtool_check(promtool: str) -> None:
    done = _run(promtool, "check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(_alert_names())} rules found" in done.stdout


def test_every_alert_rule_has_a_promtool_unit_test() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))
    assert tests["rule_files"] == [RULES.name]
    firing = {
        case["alertname"]
        for test in tests["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    silent = {
        case["alertname"]
        for test in tests["tests"]
        for case in test.get("alert_rule_test", [])
        if not case.get("exp_alerts")
    }
    assert _alert_names() - firing == set(), "rules never shown firing"
    assert _alert_names() - silent == set(), "rules never shown silent"


def test_alert_rules_pass_their_promtool_unit_tests(promtool: str) -> None:
    done = _run(promtool, "test", "rules", str(RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_a_broken_expectation_fails_promtool(promtool: str, tmp_path: Path) -> None:
    """The unit tests can fail: the same file with one expected label changed does."""
    shutil.copy(RULES, tmp_path / RULES.name)
    text = RULE_TESTS.read_text(encoding="utf-8").replace(
        'summary: "prodguard replica a is down"', 'summary: "prodguard replica b is down"', 1
    )
    broken = tmp_path / "broken.test.yml"
    broken.write_text(text, encoding="utf-8")
    done = subprocess.run(
        [promtool, "test", "rules", str(broken)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "ProdguardReplicaDown" in done.stdout + done.stderr


def _dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            if target.get("expr"):
                expr = target["expr"]
                for variable, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(variable, value)
                queries.append(expr)
    return queries


def test_dashboard_queries_parse_as_promql(promtool: str, tmp_path: Path) -> None:
    queries = _dashboard_queries()
    assert len(queries) >= 20
    assert not [q for q in queries if "$" in q], "a dashboard variable this test does not fill"
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": q} for i, q in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    done = _run(promtool, "check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    # and the check can fail: a query with a syntax error is refused
    path.write_text(
        yaml.safe_dump(
            {"groups": [{"name": "d", "rules": [{"record": "d:q", "expr": "sum(rate(x[5m])"}]}]}
        ),
        encoding="utf-8",
    )
    assert _run(promtool, "check", "rules", str(path)).returncode != 0
