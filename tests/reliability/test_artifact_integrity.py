"""Model artifacts are verified before they are served: the digest recorded at registration
(``prodguard.artifact_sha256``) is checked against the files in the artifact store, and a
tampered or digest-less version is refused — by a promotion (CLI, nothing moves) and by a
replica's follower (alert, the current champion keeps serving)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from prodguard import wiring
from prodguard.alerts import Alert, Alerter
from prodguard.config import load_settings
from prodguard.errors import ArtifactIntegrityError
from prodguard.features.feast_adapter import feature_contract
from prodguard.registry.lineage import ARTIFACT_DIGEST as ARTIFACT_DIGEST_TAG
from prodguard.rollout.faults import register_faulty
from prodguard.rollout.policy import read_targets
from prodguard.serving.fast_path import load_verified
from prodguard.serving.models import ModelFollower
from prodguard.training.trainer import pip_requirements
from tests.e2e.cli import run

pytestmark = pytest.mark.reliability


class Alerts:
    def __init__(self) -> None:
        self.sent: list[Alert] = []

    def send(self, alert: Alert) -> None:
        self.sent.append(alert)


def registry_config(folder: Path, source: Path) -> Path:
    """A private copy of the served project's registry; new versions go to ``folder``'s own
    experiment and artifact root (the session's artifacts are never touched)."""
    for name in ("mlflow.db", "audit.db"):
        shutil.copy(source / ".prodguard" / "mlflow" / name, folder / name)
    path = folder / "registry.yaml"
    path.write_text(
        f"tracking_uri: sqlite:///{folder}/mlflow.db\n"
        f"registry_uri: sqlite:///{folder}/mlflow.db\n"
        f"artifact_location: {folder}/artifacts\n"
        "experiment: integrity\n"
        f"audit_uri: sqlite:///{folder}/audit.db\n"
    )
    return path


@pytest.fixture
def project(served_project: Path, tmp_path: Path):
    """(project, env, settings, operations): v2 champion, v1 standby, v3 a copy of v2
    registered into this test's own artifact root."""
    env = {"PRODGUARD_REGISTRY__CONFIG": str(registry_config(tmp_path, served_project))}
    settings = load_settings(served_project / "prodguard.yaml", environ=env)
    operations = wiring.registry_operations(settings)
    assert register_faulty(operations, 2, 0.05, "tests", pip_requirements()) == 3
    return served_project, env, settings, operations


def stored_files(operations, version: int) -> Path:
    import mlflow

    client = mlflow.MlflowClient(operations.registry.config.tracking_uri)
    return Path(client.get_model_version_download_uri(operations.model, str(version)))


def expected_digest(folder: Path) -> str:
    """The documented recipe, computed independently: sorted '<sha256> <path>' lines."""
    lines = "".join(
        f"{hashlib.sha256(p.read_bytes()).hexdigest()} {p.relative_to(folder).as_posix()}\n"
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    )
    return hashlib.sha256(lines.encode()).hexdigest()


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def contract(settings) -> list[list[str]]:
    return feature_contract(wiring.feature_store(settings).versions())


def test_registration_records_the_digest_of_the_stored_files(project) -> None:
    _, _, settings, operations = project
    registry = operations.registry
    for version in (1, 2, 3):  # trained, and a registered copy
        files = stored_files(operations, version)
        names = {p.name for p in files.iterdir()}
        assert {"MLmodel", "model.skops", "requirements.txt"} <= names
        assert registry.version(version).tags[ARTIFACT_DIGEST_TAG] == expected_digest(files)
    assert (
        registry.version(3).tags[ARTIFACT_DIGEST_TAG]
        != registry.version(2).tags[ARTIFACT_DIGEST_TAG]
    )
    assert load_verified(registry, contract(settings), 3).version == 3


def test_a_tampered_artifact_is_refused_and_the_champion_keeps_serving(project) -> None:
    root, env, settings, operations = project
    registry = operations.registry
    alerts = Alerts()
    follower = ModelFollower(
        targets=lambda: read_targets(registry),
        load=lambda v: load_verified(registry, contract(settings), v),
        alerter=Alerter([alerts]),
        poll_seconds=3600,
    )
    follower.refresh()
    assert follower.state.describe() == {"champion": 2, "standby": 1}

    flip_a_byte(stored_files(operations, 3) / "model.skops")
    with pytest.raises(ArtifactIntegrityError, match="does not match the digest recorded"):
        load_verified(registry, contract(settings), 3)

    before = operations.state()
    done = run(
        root,
        *("promote", "--version", "3", "--reason", "tampered"),
        *("--override-standby-retention", "test"),
        env=env,
        expect=1,
    )
    assert "does not match the digest recorded at registration" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1  # one line, no traceback
    assert operations.state() == before and operations.history()[-1].action == "promote"

    registry.set_alias("champion", 3)  # a move made in the MLflow UI reaches the replica
    assert follower.refresh() is False
    assert follower.state.describe() == {"champion": 2, "standby": 1}  # still serving v2
    (refused,) = alerts.sent
    assert refused.type == "model_refused" and refused.details == {"role": "champion", "version": 3}
    assert "does not match the digest recorded" in refused.message
    follower.refresh()
    assert len(alerts.sent) == 1  # refused once, not at every poll


def test_tampered_reference_statistics_are_refused(project) -> None:
    _, _, settings, operations = project
    registry = operations.registry
    run_id = registry.version(3).run_id
    (stats_file,) = (Path(operations.registry.config.artifact_location)).rglob(
        f"{run_id}/artifacts/reference_stats.json"
    )
    stats = json.loads(stats_file.read_text())
    stats["temp"]["median"] += 10  # a fallback value nobody trained with
    stats_file.write_text(json.dumps(stats))
    with pytest.raises(ArtifactIntegrityError, match="reference_stats.json does not match"):
        load_verified(registry, contract(settings), 3)


def test_a_version_without_a_digest_is_refused_with_the_fix(project) -> None:
    import mlflow

    _, _, settings, operations = project
    client = mlflow.MlflowClient(operations.registry.config.tracking_uri)
    client.delete_model_version_tag(operations.model, "3", ARTIFACT_DIGEST_TAG)
    with pytest.raises(ArtifactIntegrityError, match="no recorded artifact digest") as refused:
        load_verified(operations.registry, contract(settings), 3)
    assert "re-register it" in str(refused.value)
