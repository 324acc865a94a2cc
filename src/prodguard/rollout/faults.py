"""Deliberately faulty model versions, for rollback drills and guard tests.

``register_faulty`` registers a copy of a version whose scores are shifted: same input contract,
fallbacks, reference statistics and baseline (so every check that guards a promotion passes),
tagged ``prodguard.fault`` so that nobody mistakes it for a real model. The base is loaded
verified (its artifact digest checked) and the copy gets the digest of its own artifact.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from prodguard.errors import RegistryError
from prodguard.registry import lineage
from prodguard.registry.operations import RegistryOperations
from prodguard.serving.models import load_verified


class ShiftedScores:
    """A classifier whose positive-class probability is the wrapped one plus ``shift``
    (clipped to [0.001, 0.999])."""

    def __init__(self, model: Any, shift: float) -> None:
        self.model = model
        self.shift = shift

    def predict_proba(self, frame: Any) -> np.ndarray:
        positive = np.clip(self.model.predict_proba(frame)[:, 1] + self.shift, 0.001, 0.999)
        return np.column_stack([1 - positive, positive])

    def predict(self, frame: Any) -> np.ndarray:
        return (self.predict_proba(frame)[:, 1] >= 0.5).astype("int64")


def register_faulty(
    operations: RegistryOperations, base: int, shift: float, actor: str, pip: list[str]
) -> int:
    """Register v<base> with scores shifted by ``shift`` as a new version (not moved to any
    alias); returns its number."""

    registry = operations.registry
    info = registry.version(base)
    loaded = load_verified(registry, lineage.recorded_store_features(info.tags) or (), base)
    model = ShiftedScores(loaded.pipeline, shift)
    artifacts = {}
    for name in lineage.COPIED_ARTIFACTS:
        try:
            artifacts[name] = registry.load_json_artifact(base, name)
        except RegistryError:  # a version may have no baseline yet
            continue
    tags = lineage.copied_tags(info.tags)  # never the base's run, drill or demotion
    tags[lineage.FAULT] = f"v{base} with scores shifted by {shift:+g} (drill by {actor})"
    return registry.log_version(
        model,
        input_example=loaded.frame([loaded.fallbacks]),
        params={"fault_shift": shift, "base_version": base},
        metrics={},
        tags=tags,
        artifacts=artifacts,
        pip_requirements=pip,
    )
