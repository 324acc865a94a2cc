"""A user trains v1 and v2, promotes, rolls back — via the CLI — and checks the MLflow UI's API."""

import json
import shutil
from pathlib import Path

import pytest

from tests.e2e.cli import get_json, run

pytestmark = pytest.mark.e2e


def test_train_promote_rollback_as_a_user(project: Path, mlflow_ui) -> None:
    run(project, "ingest", "--start", "2013-01-01", "--end", "2013-05-01", "--json")
    run(project, "materialize", "--until", "2013-05-01")
    v1 = json.loads(
        run(project, "train", "--start", "2013-01-01", "--end", "2013-03-01", "--json").stdout
    )
    v2 = json.loads(
        run(project, "train", "--start", "2013-01-01", "--end", "2013-04-01", "--json").stdout
    )
    assert (v1["version"], v2["version"]) == (1, 2)
    assert v2["rows_eval"] > 20000 and 0.5 < v2["metrics"]["auc"] < 1

    run(project, "promote", "--version", "1", "--reason", "first champion")
    promoted = run(project, "promote", "--reason", "v2 is better").stdout
    assert "held-out auc: v2" in promoted and "the previous champion's" in promoted
    status = json.loads(run(project, "status", "--json").stdout)
    assert status["lineage"]["champion"]["headline"]["metric"] == "auc"
    assert status["model"] == "flight-delay"
    assert status["aliases"] == {"champion": 2, "standby": 1, "candidate": None}
    assert status["lineage"]["champion"]["train_window"].startswith("2013-01-01")

    run(project, "rollback", "--reason", "drill")
    status = json.loads(run(project, "status", "--json").stdout)
    assert status["aliases"] == {"champion": 1, "standby": None, "candidate": None}
    assert status["versions"][1]["demoted_reason"] == "drill"

    audit = json.loads(run(project, "audit", "--json").stdout)
    assert [r["action"] for r in audit] == [
        "set_candidate",
        "set_candidate",
        "promote",
        "promote",
        "rollback",
    ]
    assert audit[-1]["to_state"] == status["aliases"]
    assert audit[2]["reason"] == "first champion" and "eval" not in audit[2]["evidence"]
    compared = audit[3]["evidence"]["eval"]  # v2 beside v1 on the held-out metric
    assert compared["metric"] == "auc"
    assert compared["candidate"] == pytest.approx(v2["metrics"]["auc"], rel=1e-5)

    # what a user sees in the MLflow UI (its REST API)
    base = mlflow_ui(status)
    model = get_json(f"{base}/api/2.0/mlflow/registered-models/get?name=flight-delay")
    aliases = {a["alias"]: int(a["version"]) for a in model["registered_model"]["aliases"]}
    assert aliases == {"champion": 1}
    version = get_json(f"{base}/api/2.0/mlflow/model-versions/get?name=flight-delay&version=2")
    tags = {t["key"]: t["value"] for t in version["model_version"]["tags"]}
    assert tags["prodguard.demoted_reason"] == "drill"
    assert tags["prodguard.feature_service"] == "flight_delay_features"
    assert "prodguard.dataset_digest" in tags and "prodguard.eval.auc" in tags

    # bad input: each one line, nothing moved
    for args, message in [
        (["rollback", "--reason", "again"], "no standby to roll back to"),
        (["promote"], "no candidate to promote"),
        (["promote", "--version", "9"], "has no version 9"),
        (["register", "--version", "9"], "has no version 9"),
        (["train", "--start", "2013-06-01", "--end", "2013-07-01"], "no 'flights' rows"),
    ]:
        done = run(project, *args, expect=1)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and message in lines[0], done.stderr
    assert json.loads(run(project, "status", "--json").stdout)["aliases"] == status["aliases"]

    # a feature service change makes the registered input contract stale
    run(project, "register", "--version", "2", "--reason", "retry")
    definitions = project / "feature_repo" / "definitions.py"
    original = definitions.read_text()
    visib = '        Field(name="visib", dtype=Float64, description="Visibility, miles"),\n'
    definitions.write_text(original.replace(visib, ""))
    run(project, "materialize", "--until", "2013-05-01")
    done = run(project, "promote", expect=1)
    assert (
        "does not match the feature service: no longer served weather_hourly:visib" in done.stderr
    )

    # restored, the contract matches again (a new Feast version, the same features)
    definitions.write_text(original)
    run(project, "materialize", "--until", "2013-05-01")
    # ... but a model whose artifacts are gone cannot be promoted
    artifacts = project / ".prodguard" / "mlflow" / "artifacts"
    for path in list(artifacts.rglob("MLmodel")):
        if tags["prodguard.run_id"] in path.read_text():
            shutil.rmtree(path.parent)
    done = run(project, "promote", expect=1)
    assert "v2 fails to load or score one row" in done.stderr
    final = json.loads(run(project, "status", "--json").stdout)["aliases"]
    assert final == {"champion": 1, "standby": None, "candidate": 2}
