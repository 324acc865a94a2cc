"""The stored fast path's rules (``serving.fast_path``): recorded with its digest and parity, or
the reason it is not; at load used only when the bytes match the recorded digest, else the model
scores itself with the reason; no record -> converted at load; a registry that cannot be reached
is not a reason to fall back (the load is retried)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from sklearn.dummy import DummyClassifier

from prodguard.errors import RegistryError, RegistryUnavailable
from prodguard.registry import lineage as names
from prodguard.registry.lineage import Lineage, copied_tags, scoring_path
from prodguard.serving.fast_path import compile_version, digest, record, select
from prodguard.serving.models import LoadedModel
from prodguard.serving.treelite_adapter import PARITY, TreeliteScorer
from prodguard.tasks import ModelScorer, Task, TaskSpec
from prodguard.training.model import build_pipeline, prepare

pytestmark = pytest.mark.unit
CONTRACT = (("maker", "categorical"), ("size", "numeric"))
FALLBACKS = {"maker": "A", "size": 0.0}


class Registry:
    """Binary artifacts and tags in memory; ``fail`` injects a read failure."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.artifacts: dict[tuple[int, str], bytes] = {}
        self.tags: dict[str, str] = {}
        self.fail = fail

    def load_bytes_artifact(self, version: int, name: str, run_id: str | None = None) -> bytes:
        if self.fail is not None:
            raise self.fail
        return self.artifacts[(version, name)]

    def log_bytes_artifact(self, version: int, name: str, data: bytes) -> None:
        self.artifacts[(version, name)] = data

    def set_version_tag(self, version: int, key: str, value: str) -> None:
        self.tags[key] = value


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(7)
    n = 300
    x = pd.DataFrame(
        {
            "maker": pd.Series(rng.choice(["A", "B", "C"], n), dtype="string"),
            "size": rng.normal(size=n),
        }
    )
    y = ((x["maker"] == "B") ^ (x["size"] > 0.5)).astype(int)
    return x, y


@pytest.fixture(scope="module")
def model(data) -> LoadedModel:
    x, y = data
    pipeline = build_pipeline(x, seed=1)
    pipeline.set_params(model__max_iter=10, model__early_stopping=False)
    pipeline.fit(prepare(x), y)
    spec = TaskSpec(Task.BINARY, (0, 1))
    categories = {"maker": frozenset({"A", "B", "C"})}
    return LoadedModel(
        1, pipeline, ("maker", "size"), frozenset({"maker"}), FALLBACKS, categories, spec
    )


def registration_tags() -> dict[str, str]:
    import json

    return {
        names.STORE_FEATURES: json.dumps([list(c) for c in CONTRACT]),
        names.INPUT_CONTRACT: json.dumps([list(c) for c in CONTRACT]),
        names.FALLBACKS: json.dumps(FALLBACKS),
    }


def recorded(model: LoadedModel, data) -> tuple[Registry, Lineage]:
    registry = Registry()
    stats = {"maker": {"kind": "categorical", "categories": {"A": 1, "B": 1, "C": 1}}}
    how = record(registry, 1, model.pipeline, model.spec, registration_tags(), stats, data[0])
    assert how.startswith("fast path treelite"), how
    found = Lineage.from_tags({**registration_tags(), **registry.tags})
    assert found is not None
    return registry, found


def test_registration_stores_the_artifact_with_its_digest_and_parity(model, data) -> None:
    registry, found = recorded(model, data)
    (stored,) = registry.artifacts.values()
    assert registry.artifacts.keys() == {(1, names.FAST_PATH_ARTIFACT)}
    assert found.fast_path_digest == digest(stored) and found.fast_path.startswith("treelite")
    assert found.fast_path_parity is not None and found.fast_path_parity <= PARITY
    assert found.fast_path_rows == len(data[0]) + 1 + 4 + 2  # evaluation + probe rows
    assert list(registry.tags)[-1] == names.FAST_PATH  # last: without it the load converts


def test_the_stored_artifact_is_served_when_its_digest_matches(model, data) -> None:
    registry, found = recorded(model, data)
    scorer, how = select(registry, model, found)
    assert isinstance(scorer, TreeliteScorer) and "stored artifact" in how
    frame = model.frame(data[0].head(50).to_dict("records"))
    expected = ModelScorer(model.pipeline, Task.BINARY).raw(frame)
    assert np.max(np.abs(scorer.raw(frame) - expected)) <= PARITY


def test_a_tampered_artifact_falls_back_to_the_model_with_the_reason(model, data, caplog) -> None:
    registry, found = recorded(model, data)
    key = (1, names.FAST_PATH_ARTIFACT)
    stored = bytearray(registry.artifacts[key])
    stored[len(stored) // 2] ^= 0x01
    registry.artifacts[key] = bytes(stored)
    scorer, how = select(registry, model, found)
    assert scorer is None
    assert how.startswith("the model itself: its fast_path.treelite does not match the digest")
    (line,) = [r.getMessage() for r in caplog.records if "fast path not used" in r.getMessage()]
    assert "v1" in line and "\n" not in line


def test_a_missing_digest_tag_or_unreadable_artifact_falls_back(model, data) -> None:
    registry, found = recorded(model, data)
    scorer, how = select(registry, model, replace(found, fast_path_digest=None))
    assert scorer is None and "recorded none" in how
    missing = Registry(fail=RegistryError("reading artifact failed: not found"))
    scorer, how = select(missing, model, found)
    assert scorer is None and "cannot be read" in how


def test_an_unreachable_registry_is_retried_not_fallen_back_from(model, data) -> None:
    _, found = recorded(model, data)
    with pytest.raises(RegistryUnavailable):
        select(Registry(fail=RegistryUnavailable("down")), model, found)


def test_an_unsupported_model_records_why_and_is_never_converted_at_load(model, data) -> None:
    x, y = data
    other = build_pipeline(x, seed=1)
    other.set_params(model=DummyClassifier()).fit(prepare(x), y)
    dummy = replace(model, pipeline=other)
    tags, artifact = compile_version(dummy, x.to_dict("records"))
    assert artifact == b""
    assert tags == {
        names.FAST_PATH: "unsupported: DummyClassifier is not a tree ensemble treelite imports"
    }
    found = Lineage.from_tags({**registration_tags(), **tags})
    scorer, how = select(Registry(), model, found)  # even with a model that would convert
    assert (
        scorer is None
        and how == "the model itself: DummyClassifier is not a tree ensemble treelite imports"
    )
    assert scoring_path(tags) == how


def test_versions_without_a_record_and_faulty_copies_convert_at_load(model) -> None:
    found = Lineage.from_tags(registration_tags())
    assert found is not None and found.fast_path is None
    scorer, how = select(Registry(), model, found)
    assert scorer is not None and how.startswith("fast path converted at load")
    scorer, how = select(object(), model, replace(found, fast_path="treelite 4.8.0"))
    assert scorer is not None and "converted at load" in how  # no binary artifacts (staging)
    faulty = replace(found, fast_path="treelite 4.8.0", fault="v1 shifted")
    assert "converted at load" in select(Registry(), model, faulty)[1]


def test_a_faulty_copy_does_not_inherit_the_fast_path() -> None:
    tags = {
        names.FAST_PATH: "treelite 4.8.0",
        names.FAST_PATH_DIGEST: "ab",
        names.FAST_PATH_PARITY: "0",
        names.FAST_PATH_ROWS: "3",
        names.SEED: "1",
    }
    assert copied_tags(tags) == {names.SEED: "1"}
    assert scoring_path(tags) == "fast path treelite 4.8.0, parity 0 on 3 rows"
    assert scoring_path({}).startswith("converted at load")


def test_a_pyfunc_only_model_records_that_it_serves_itself(model, data) -> None:
    class Pyfunc:
        flavor = "python_function"

    tags, artifact = compile_version(replace(model, pipeline=Pyfunc()), [FALLBACKS])
    assert artifact == b""
    assert tags == {
        names.FAST_PATH: "unsupported: served through its MLflow python_function flavor"
    }


def test_parity_above_1e6_is_not_used_and_says_why(model, data, monkeypatch) -> None:
    registry, found = recorded(model, data)
    monkeypatch.setattr("prodguard.serving.treelite_adapter.parity", lambda *_: 1e-3)
    rows = data[0].head(20).to_dict("records")
    tags, artifact = compile_version(model, rows)
    assert artifact == b""
    assert tags == {names.FAST_PATH: "unsupported: parity 0.001 > 1e-06 on 20 rows"}
    scorer, how = select(registry, model, found)  # at load: the stored one scores apart
    assert scorer is None and how.endswith("fast_path.treelite scores 0.001 apart")


def test_an_unexpected_error_never_loses_a_registration_nor_refuses_a_load(
    model, data, monkeypatch
) -> None:
    registry, found = recorded(model, data)

    def broken(*_: object) -> None:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr("prodguard.serving.treelite_adapter.convert", broken)
    monkeypatch.setattr("prodguard.serving.treelite_adapter.from_bytes", broken)
    tags, artifact = compile_version(model, [FALLBACKS])
    assert artifact == b""
    assert tags == {names.FAST_PATH: "unsupported: the conversion failed (RuntimeError: boom)"}
    scorer, how = select(registry, model, found)
    assert scorer is None and how.endswith("does not score (RuntimeError: boom)")
