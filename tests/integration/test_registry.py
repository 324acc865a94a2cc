"""Training and the MLflow registry on a temporary SQLite store, with real Feast features."""

import json
import multiprocessing
import shutil
import sys
from pathlib import Path

import pytest

from prodguard import app, cli, wiring
from prodguard.config import load_settings
from prodguard.contracts.suites import read_suite
from prodguard.errors import (
    ConcurrentUpdateError,
    NoDataError,
    PromotionRefused,
    RegistryError,
)
from prodguard.ingestion.offline import OfflineStore
from prodguard.registry.audit import move_line
from prodguard.registry.operations import AliasState
from prodguard.rollout.jobs import abort_rollout, start_rollout
from tests.conftest import utc

pytestmark = pytest.mark.integration


def write_registry_config(folder: Path, artifacts: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "registry.yaml"
    path.write_text(
        f"tracking_uri: sqlite:///{folder}/mlflow.db\n"
        f"registry_uri: sqlite:///{folder}/mlflow.db\n"
        f"artifact_location: {artifacts}\n"
        "experiment: tests\n"
        f"audit_uri: sqlite:///{folder}/audit.db\n"
    )
    return path


def settings_for(project: Path, registry_config: Path):
    return load_settings(
        project / "prodguard.yaml", environ={"PRODGUARD_REGISTRY__CONFIG": str(registry_config)}
    )


@pytest.fixture(scope="module")
def trained(ingested, tmp_path_factory) -> dict:
    """v1 trained on Jan-Feb and v2 on Jan-Mar, in a registry to be copied by each test."""
    folder = tmp_path_factory.mktemp("registry")
    config = write_registry_config(folder, folder / "artifacts")
    settings = settings_for(ingested, config)
    first = app.train(settings, utc("2013-01-01"), utc("2013-03-01"), actor="tests")
    second = app.train(settings, utc("2013-01-01"), utc("2013-04-01"), actor="tests")
    return {"folder": folder, "project": ingested, "results": (first, second)}


@pytest.fixture
def settings(trained, tmp_path):
    """Settings on a private copy of the trained registry (artifacts shared, read-only)."""
    for name in ("mlflow.db", "audit.db"):
        shutil.copy(trained["folder"] / name, tmp_path / name)
    config = write_registry_config(tmp_path, trained["folder"] / "artifacts")
    return settings_for(trained["project"], config)


def test_train_registers_candidates_with_lineage(trained, settings) -> None:
    first, second = trained["results"]
    assert (first.version, second.version) == (1, 2)
    operations = wiring.registry_operations(settings)
    assert operations.state() == AliasState(candidate=2)
    tags = operations.registry.version(2).tags
    flights = OfflineStore(settings.paths.offline_dir).read("flights")
    in_window = flights[
        (flights["event_timestamp"] >= utc("2013-01-01"))
        & (flights["event_timestamp"] < utc("2013-04-01"))
    ]
    assert tags["prodguard.train_window"] == ("2013-01-01T00:00:00+00:00/2013-04-01T00:00:00+00:00")
    assert tags["prodguard.eval_window"].startswith("2013-04-01T00:00:00+00:00/2013-05-01")
    assert int(tags["prodguard.rows_train"]) == in_window["delayed"].notna().sum()
    assert int(tags["prodguard.rows_unlabelled"]) == in_window["delayed"].isna().sum()
    assert tags["prodguard.feature_service"] == "flight_delay_features"
    assert json.loads(tags["prodguard.feature_views"]) == {
        "weather_hourly": 0,
        "plane_specs": 0,
        "carrier_ontime_daily": 0,
    }
    suites = {n: [read_suite(settings.suite_path(n)).digest] for n in settings.sources}
    assert json.loads(tags["prodguard.suite_digests"]) == suites
    assert len(tags["prodguard.dataset_digest"]) == 64
    assert tags["prodguard.code_version"]
    assert 0.55 < float(tags["prodguard.eval.auc"]) < 0.9
    contract = json.loads(tags["prodguard.input_contract"])
    assert ["carrier", "categorical"] in contract and ["temp", "numeric"] in contract
    assert not {"dep_delay", "arr_delay", "dep_time", "air_time"} & {c for c, _ in contract}
    stats = operations.registry.load_json_artifact(2, "reference_stats.json")
    assert stats["temp"]["kind"] == "numeric" and len(stats["temp"]["bin_edges"]) == 9
    assert json.loads(tags["prodguard.fallbacks"])["temp"] == stats["temp"]["median"]
    summary = app.status(settings)
    assert summary["aliases"] == {"champion": None, "standby": None, "candidate": 2}
    assert summary["lineage"]["candidate"]["rows_train"] == tags["prodguard.rows_train"]
    assert "mlflow server --backend-store-uri sqlite:///" in summary["mlflow_ui"]


def test_training_is_deterministic(trained, settings) -> None:
    again = app.train(settings, utc("2013-01-01"), utc("2013-04-01"), actor="tests")
    registry = wiring.registry_operations(settings).registry
    old, new = registry.version(2).tags, registry.version(again.version).tags
    assert new["prodguard.dataset_digest"] == old["prodguard.dataset_digest"]
    assert new["prodguard.eval.auc"] == old["prodguard.eval.auc"]
    assert again.metrics == trained["results"][1].metrics


def test_promote_rollback_promote_round_trip(settings) -> None:
    operations = wiring.registry_operations(settings, with_checks=True)
    operations.promote("alice", "first", version=1)
    assert operations.state() == AliasState(champion=1, candidate=2)
    operations.promote("alice", "better")
    assert operations.state() == AliasState(champion=2, standby=1)
    record = operations.rollback("bob", "drill", evidence={"trigger": "manual"})
    assert operations.state() == AliasState(champion=1, candidate=None)
    assert operations.registry.version(2).tags["prodguard.demoted_reason"] == "drill"
    operations.promote("alice", "again", version=2, override_demoted="fixed")
    assert operations.state() == AliasState(champion=2, standby=1)
    history = operations.history()
    assert [r.action for r in history] == [
        "set_candidate",
        "set_candidate",
        "promote",
        "promote",
        "rollback",
        "promote",
    ]
    for earlier, later in zip(history, history[1:], strict=False):
        assert earlier.to_state == later.from_state  # the audit log is a consistent chain
    assert history[-1].to_state == operations.state().as_dict()
    assert record.evidence == {"trigger": "manual"} and record.actor == "bob"
    assert move_line(history[3]) == (
        f"promote: champion v1 -> v2, standby unset -> v1, candidate v2 -> unset "
        f"(audit #{history[3].id}, by alice)"
    )
    assert move_line(record) == (
        f"rollback: champion v2 -> v1, standby v1 -> unset (audit #{record.id}, by bob)"
    )


def test_refusals_move_nothing(settings) -> None:
    operations = wiring.registry_operations(settings, with_checks=True)
    with pytest.raises(PromotionRefused, match="no standby to roll back to"):
        operations.rollback("a", "why")
    with pytest.raises(RegistryError, match="has no version 42"):
        operations.promote("a", "why", version=42)
    with pytest.raises(RegistryError, match="has no version 42"):
        operations.set_candidate(42, "a", "why")
    operations.promote("a", "ok")
    with pytest.raises(PromotionRefused, match="no candidate to promote"):
        operations.promote("a", "why")
    with pytest.raises(PromotionRefused, match="v2 is already the champion"):
        operations.promote("a", "why", version=2)
    assert operations.state() == AliasState(champion=2)
    assert len(operations.history()) == 3


def test_a_second_rollout_start_is_refused_while_one_runs(settings, monkeypatch, capsys) -> None:
    operations = wiring.registry_operations(settings, with_checks=True)
    operations.promote("a", "first", version=1)
    started = start_rollout(settings, "canary", "alice", "50,100", version=2)
    running = operations.traffic()
    assert (running.mode, running.version) == ("canary", 2)
    since = running.step_started[:19]
    with pytest.raises(PromotionRefused) as refused:
        start_rollout(settings, "shadow", "bob", version=2)
    assert str(refused.value) == (
        f"a canary rollout of v2 is running (step 1 of 2: 50% of traffic, since {since}); "
        "nothing changed — end it first with `prodguard rollout abort --reason ...`, then start "
        "the new one"
    )
    # the command line: the same one line, exit code 1 (refused)
    monkeypatch.setenv("PRODGUARD_REGISTRY__CONFIG", str(settings.registry.config))
    config = str(settings.config_path)
    monkeypatch.setattr(
        sys, "argv", ["prodguard", "--config", config, "rollout", "start", "--mode", "shadow"]
    )
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"error: {refused.value}"]
    assert operations.traffic() == running  # not replaced
    assert operations.history(1)[0].id == started.id
    abort_rollout(settings, "alice", "make way")
    shadow = start_rollout(settings, "shadow", "bob", version=2)
    assert operations.traffic().mode == "shadow" and shadow.reason == "shadow rollout of v2"
    with pytest.raises(PromotionRefused, match=r"^a shadow rollout of v2 is running \(since "):
        start_rollout(settings, "canary", "alice", "50,100", version=2)
    # v2 promoted by hand before the guard ended its rollout: that rollout is over, not running
    operations.promote("alice", "by hand", version=2)
    again = start_rollout(settings, "canary", "bob", "50,100", version=1)
    assert again.reason == "canary rollout of v1" and operations.traffic().version == 1


def test_stale_expectation_is_refused(settings) -> None:
    operations = wiring.registry_operations(settings)
    seen = operations.state()
    operations.registry.set_alias("champion", 1)  # someone moves it in the MLflow UI
    with pytest.raises(ConcurrentUpdateError, match="aliases moved since they were read"):
        operations.promote("a", "why", expected=seen)
    assert operations.state() == AliasState(champion=1, candidate=2)


def test_a_failed_audit_write_puts_the_aliases_back(settings, monkeypatch) -> None:
    operations = wiring.registry_operations(settings)
    before, history = operations.state(), operations.history()

    def broken(conn, record):
        raise RegistryError("audit log write failed: disk full")

    monkeypatch.setattr(operations.audit, "append", broken)
    with pytest.raises(RegistryError, match="disk full"):
        operations.promote("a", "why")
    assert operations.state() == before
    assert operations.history() == history


def _race(settings, barrier, results) -> None:
    operations = wiring.registry_operations(settings)
    seen = operations.state()
    barrier.wait()
    try:
        operations.promote("racer", "race", expected=seen)
        results.put("ok")
    except ConcurrentUpdateError:
        results.put("conflict")
    except PromotionRefused as exc:
        results.put(f"refused: {exc}")


def test_parallel_promotions_exactly_one_wins(settings) -> None:
    operations = wiring.registry_operations(settings)
    operations.promote("setup", "start", version=1)
    operations.set_candidate(2, "setup", "contender")
    # spawned, not forked: a fork of a test process whose other threads hold locks (logging,
    # MLflow's, an earlier test's pools) can hang in the child
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(10), context.Queue()
    workers = [context.Process(target=_race, args=(settings, barrier, results)) for _ in range(10)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    outcomes = sorted(results.get(timeout=5) for _ in workers)
    assert outcomes.count("ok") == 1, outcomes
    assert outcomes.count("conflict") == 9, outcomes
    assert operations.state() == AliasState(champion=2, standby=1)
    history = operations.history()
    assert [r.action for r in history].count("promote") == 2
    assert history[-1].to_state == operations.state().as_dict()


def test_window_without_rows_or_labels(settings) -> None:
    with pytest.raises(NoDataError, match="no 'flights' rows in \\[2014-01-01, 2014-02-01\\)"):
        app.train(settings, utc("2014-01-01"), utc("2014-02-01"), actor="t")


def test_unreachable_store_is_a_clear_error(settings, tmp_path) -> None:
    config = tmp_path / "down.yaml"
    config.write_text(
        "tracking_uri: postgresql+psycopg://nobody:secret@127.0.0.1:1/nothing\n"
        "registry_uri: postgresql+psycopg://nobody:secret@127.0.0.1:1/nothing\n"
        f"artifact_location: {tmp_path}/a\nexperiment: x\naudit_uri: sqlite:///{tmp_path}/a.db\n"
    )
    down = settings.model_copy(
        update={"registry": settings.registry.model_copy(update={"config": config})}
    )
    with pytest.raises(RegistryError) as caught:
        wiring.registry_operations(down).state()
    assert "secret" not in str(caught.value) and "\n" not in str(caught.value)
