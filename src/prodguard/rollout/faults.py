"""Deliberately faulty model versions, for rollback drills and guard tests.

``register_faulty`` registers a copy of a version whose outputs are shifted, per task
(``prodguard.tasks.shift_output``): a binary classifier's positive-class probability moves by
``shift``; a multiclass classifier moves a share ``shift`` of probability onto its last class; a
regressor's values move by ``shift`` baseline standard deviations. Same input contract,
fallbacks, reference statistics and baseline (so every check that guards a promotion passes),
tagged ``prodguard.fault`` so that nobody mistakes it for a real model. The base is loaded
verified (its artifact digest checked) and the copy gets the digest of its own artifact. Only
sklearn models are copied (a pyfunc model is refused in one line; ``prodguard drill`` builds its
faulty copy in memory instead).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from prodguard.errors import ModelContractError, RegistryError
from prodguard.registry import lineage
from prodguard.registry.operations import RegistryOperations
from prodguard.registry.ports import Classifier
from prodguard.serving.fast_path import load_verified
from prodguard.tasks import Task, TaskSpec, normalise, shift_output


class ShiftedScores:
    """A classifier whose probabilities are the wrapped one's, shifted (binary: the positive
    class's probability plus ``shift``, clipped to [0.001, 0.999]; multiclass: a share
    ``shift`` of every other class's probability moved onto the last class)."""

    spec = TaskSpec(Task.BINARY, (0, 1))  # copies registered before tasks existed are binary

    def __init__(self, model: Classifier, shift: float, spec: TaskSpec | None = None) -> None:
        self.model = model
        self.shift = shift
        if spec is not None:
            self.spec = spec

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        return shift_output(self.spec, self.model.predict_proba(frame), self.shift)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return np.asarray(normalise(self.spec, self.predict_proba(frame)).predicted)


class ShiftedValues:
    """A regressor whose values are the wrapped one's plus ``shift * scale``."""

    def __init__(self, model: Any, shift: float, scale: float) -> None:
        self.model = model
        self.shift = shift
        self.scale = scale

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        spec = TaskSpec(Task.REGRESSION)
        return shift_output(spec, self.model.predict(frame), self.shift, self.scale)


def faulty_model(model: Any, spec: TaskSpec, shift: float, scale: float = 1.0) -> Any:
    """``model`` with its outputs shifted as its task's drill fault (``scale``: the baseline
    standard deviation of a regressor's values)."""
    if spec.task is Task.REGRESSION:
        return ShiftedValues(model, shift, scale)
    return ShiftedScores(model, shift, spec)


def score_scale(baseline: dict[str, Any] | None) -> float:
    """The standard deviation of the staging scores recorded in a baseline (its score
    histogram; the open outer bins count at their inner edge), 1.0 without one."""
    if not baseline or not baseline.get("score_edges"):
        return 1.0
    edges = np.asarray(baseline["score_edges"], dtype="float64")
    weights = np.asarray(baseline["score_fractions"], dtype="float64")
    centres = np.concatenate([[edges[0]], (edges[:-1] + edges[1:]) / 2, [edges[-1]]])
    if weights.sum() <= 0 or len(centres) != len(weights):
        return 1.0
    mean = np.average(centres, weights=weights)
    sd = float(np.sqrt(np.average((centres - mean) ** 2, weights=weights)))
    return sd if sd > 0 else 1.0


def register_faulty(
    operations: RegistryOperations, base: int, shift: float, actor: str, pip: list[str]
) -> int:
    """Register v<base> with outputs shifted by ``shift`` (see the module docstring) as a new
    version (not moved to any alias); returns its number."""
    registry = operations.registry
    info = registry.version(base)
    loaded = load_verified(registry, lineage.recorded_store_features(info.tags) or (), base)
    flavor = getattr(loaded.pipeline, "flavor", "sklearn")
    if flavor != "sklearn":
        raise ModelContractError(
            f"v{base} is served through its MLflow {flavor} flavor: a faulty copy is registered "
            f"for sklearn models only; rehearse its rollback with `prodguard drill --version "
            f"{base}` (its faulty copy lives in memory)"
        )
    artifacts = {}
    for name in lineage.COPIED_ARTIFACTS:
        try:
            artifacts[name] = registry.load_json_artifact(base, name)
        except RegistryError:  # a version may have no baseline yet
            continue
    scale = score_scale(artifacts.get(lineage.BASELINE_JSON))
    model = faulty_model(loaded.pipeline, loaded.spec, shift, scale)
    tags = lineage.copied_tags(info.tags)  # never the base's run, drill or demotion
    tags[lineage.FAULT] = f"v{base} with outputs shifted by {shift:+g} (drill by {actor})"
    return registry.log_version(
        model,
        input_example=loaded.frame([loaded.fallbacks]),
        params={"fault_shift": shift, "fault_scale": scale, "base_version": base},
        metrics={},
        tags=tags,
        artifacts=artifacts,
        pip_requirements=pip,
    )
