"""A champion moved outside prodguard (the MLflow UI moves only ``champion``), on the real MLflow
SQLite store: recorded by the first replica or guard that sees it, once, with the previous
champion kept as standby; a move onto a rolled-back version alerts; promoting one needs an
override."""

import json
import multiprocessing

import pytest

from prodguard import app, wiring
from prodguard.alerts import Alerter, JsonlSink
from prodguard.errors import PromotionRefused
from prodguard.registry.operations import RECONCILE_ACTOR, AliasState, ObservedTargets
from tests.integration.test_registry import settings, trained  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration


def champion_two_standby_one(settings):  # noqa: F811 - the fixture's value
    operations = wiring.registry_operations(settings)
    operations.promote("alice", "first", version=1)
    operations.promote("alice", "better")
    assert operations.state() == AliasState(champion=2, standby=1)
    return operations


def alerting_to(operations, path):
    """The operations' alerts go to ``path`` (the test's own file, not the shared project's)."""
    operations.alerter = Alerter([JsonlSink(path)])
    return JsonlSink(path)


def test_the_first_replica_records_a_ui_move_and_keeps_the_standby(settings) -> None:  # noqa: F811
    operations = champion_two_standby_one(settings)
    records = len(operations.history())
    replica_a = ObservedTargets(operations, "replica-a")
    replica_b = ObservedTargets(wiring.registry_operations(settings), "replica-b")
    assert replica_a()[0] == replica_b()[0] == {"champion": 2, "standby": 1, "candidate": None}
    assert len(operations.history()) == records  # seeing nothing new records nothing

    operations.registry.set_alias("champion", 1)  # what "Save aliases" in the MLflow UI does

    aliases, _ = replica_a()  # the replica's next poll
    assert aliases == {"champion": 1, "standby": 2, "candidate": None}
    assert replica_b()[0] == aliases
    history = operations.history()
    assert len(history) == records + 1  # two replicas saw it: one record
    record = history[-1]
    assert (record.action, record.actor) == ("reconcile", RECONCILE_ACTOR)
    assert record.from_state == {"champion": 2, "standby": 1, "candidate": None}
    assert record.to_state == aliases == operations.state().as_dict()
    assert record.evidence["seen_by"] == "replica-a"
    assert record.evidence["observed"] == {"champion": 1, "standby": 1, "candidate": None}
    assert record.evidence["outside_move"] == {"from": 2, "to": 1}
    assert "v2 kept as standby" in record.reason
    assert operations.standby_since(2) == record.time  # the retention clock starts here

    status = app.status(settings)
    assert status["reconciled"] is None and status["aliases"] == aliases
    assert status["traffic"]["describe"].endswith("standby warm")


def test_a_candidate_moved_to_champion_is_no_longer_candidate(settings) -> None:  # noqa: F811
    operations = wiring.registry_operations(settings)
    operations.promote("alice", "first", version=1)
    assert operations.state() == AliasState(champion=1, candidate=2)
    operations.registry.set_alias("champion", 2)
    record = operations.reconcile("guard")
    assert record is not None and record.evidence["seen_by"] == "guard"
    assert operations.state() == AliasState(champion=2, standby=1)  # as `promote` would


def _observe(settings, barrier, results) -> None:  # noqa: F811
    observer = ObservedTargets(wiring.registry_operations(settings), "racer")
    barrier.wait()
    results.put(json.dumps(observer()[0], sort_keys=True))


def test_replicas_seeing_the_move_at_once_record_it_once(settings) -> None:  # noqa: F811
    operations = champion_two_standby_one(settings)
    records = len(operations.history())
    operations.registry.set_alias("champion", 1)
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(6), context.Queue()
    workers = [
        context.Process(target=_observe, args=(settings, barrier, results)) for _ in range(6)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    seen = {results.get(timeout=5) for _ in workers}
    history = operations.history()
    assert [r.action for r in history[records:]] == ["reconcile"]
    assert operations.state() == AliasState(champion=1, standby=2)
    # every replica serves the completed state (or the move, completed by another, a poll later)
    assert seen <= {
        json.dumps({"candidate": None, "champion": 1, "standby": 2}, sort_keys=True),
        json.dumps({"candidate": None, "champion": 1, "standby": 1}, sort_keys=True),
    }


def test_a_ui_move_onto_a_rolled_back_version_alerts(settings, tmp_path) -> None:  # noqa: F811
    operations = champion_two_standby_one(settings)
    sink = alerting_to(operations, tmp_path / "alerts.jsonl")
    operations.rollback("guard", "kpi 30% worse than the baseline")
    assert operations.state() == AliasState(champion=1)
    operations.registry.set_alias("champion", 2)  # someone clicks v2 back in the UI

    record = operations.reconcile("guard")
    assert record is not None
    assert record.evidence["demoted_reason"] == "kpi 30% worse than the baseline"
    assert operations.state() == AliasState(champion=2, standby=1)
    sent = sink.read()
    assert len(sent) == 1 and (sent[0]["type"], sent[0]["severity"]) == (
        "demoted_champion",
        "critical",
    )
    assert "kpi 30% worse than the baseline" in sent[0]["message"]
    assert sent[0]["model_version"] == 2
    assert operations.reconcile("guard") is None
    assert len(sink.read()) == 1


def test_promoting_a_rolled_back_version_needs_an_override(settings) -> None:  # noqa: F811
    operations = champion_two_standby_one(settings)
    operations.rollback("guard", "latency p99 doubled")
    records = len(operations.history())
    with pytest.raises(PromotionRefused, match=r"v2 was rolled back .*latency p99 doubled.*"):
        operations.promote("alice", "again", version=2)
    assert operations.state() == AliasState(champion=1) and len(operations.history()) == records
    status = app.status(settings)
    assert "no standby" in status["traffic"]["describe"]
    assert "standby warm" not in status["traffic"]["describe"]

    record = operations.promote("alice", "again", version=2, override_demoted="cache fixed")
    assert record.evidence["demoted_override"] == "cache fixed"
    assert record.evidence["demoted_reason"] == "latency p99 doubled"
    assert operations.state() == AliasState(champion=2, standby=1)


def test_a_rollback_interrupted_after_moving_champion_is_completed(
    settings,  # noqa: F811
    monkeypatch,
) -> None:
    operations = champion_two_standby_one(settings)
    records = len(operations.history())

    def killed(alias: str) -> None:
        raise KeyboardInterrupt  # stands for a kill: nothing after this runs

    monkeypatch.setattr(operations.registry, "delete_alias", killed)
    with pytest.raises(KeyboardInterrupt):
        operations.rollback("guard", "error rate")
    monkeypatch.undo()
    assert operations.state() == AliasState(champion=1, standby=1)  # moved, not recorded
    assert len(operations.history()) == records

    record = operations.reconcile("guard")
    assert record is not None and "interrupted rollback of v2" in record.reason
    assert operations.state() == AliasState(champion=1)  # v2 (rolled back) is not the standby
    assert operations.registry.version(2).tags["prodguard.demoted_reason"] == "error rate"


def test_a_promotion_reading_the_ui_move_is_not_refused(settings) -> None:  # noqa: F811
    operations = champion_two_standby_one(settings)
    operations.registry.set_alias("champion", 1)  # not seen by any replica or guard yet
    record = operations.promote("alice", "back to v2", version=2, override_retention="test")
    assert [r.action for r in operations.history()[-2:]] == ["reconcile", "promote"]
    assert record.from_state == {"champion": 1, "standby": 2, "candidate": None}
    assert operations.state() == AliasState(champion=2, standby=1)
