"""Configuration mistakes a team makes when it writes its own project: each is one line naming
the setting and what was found (exit 2), never "unexpected KeyError ... (a bug ...)"."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import copy_project
from tests.e2e.cli import run

pytestmark = pytest.mark.reliability
TRAIN = ["train", "--start", "2013-01-01", "--end", "2013-02-01"]
SERVE = ["serve", "--port", "1"]


@pytest.fixture(scope="module")
def project(ingested: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = copy_project(ingested, tmp_path_factory.mktemp("mistakes") / "project")
    run(root, "materialize", "--until", "2013-05-01")
    return root


@pytest.mark.parametrize(
    ("setting", "value", "args", "message"),
    [
        ("MODEL__LABEL", "delay", TRAIN, "model.label 'delay' is not a column of source 'flights'"),
        (
            "MODEL__ENTITY_KEYS",
            '["origin", "carrier", "tail"]',
            TRAIN,
            "model.entity_keys ['tail'] are not columns of source 'flights'",
        ),
        (
            "MODEL__ENTITY_KEYS",
            '["origin", "carrier"]',
            TRAIN,
            "lack the feature service's join keys ['tailnum']",
        ),
        ("MODEL__TASK", "ranking", TRAIN, "model.task"),
        (
            "SERVING__REQUEST_MODEL",
            "prodguard_flights.features:request_features",
            SERVE,
            "serving.request_model 'prodguard_flights.features:request_features' is a function",
        ),
        (
            "SERVING__REQUEST_MODEL",
            "pydantic:BaseModel",
            SERVE,
            "is a class lacking ['from_row', 'to_row']",
        ),
        ("SERVING__REQUEST_MODEL", "prodguard_flights.features:Nope", SERVE, "has no 'Nope'"),
    ],
)
def test_a_configuration_mistake_is_one_line_naming_the_setting(
    project: Path, setting: str, value: str, args: list[str], message: str
) -> None:
    done = run(project, *args, expect=2, env={f"PRODGUARD_{setting}": value})
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert "bug" not in done.stderr and "Traceback" not in done.stderr
