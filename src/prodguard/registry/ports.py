"""What the core needs of a model registry (``MlflowRegistry`` is the implementation; a drill's
``StagingRegistry`` is another). Typed against this, not against the adapter."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from prodguard.registry.config import RegistryConfig
from prodguard.registry.mlflow_adapter import ModelVersion


class Classifier(Protocol):
    """A registered model as the core uses it: probabilities per class, one row per input row."""

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray: ...


class VersionReader(Protocol):
    """Reads one registered version and its JSON artifacts."""

    def version(self, version: int) -> ModelVersion: ...

    def load_json_artifact(self, version: int, name: str) -> Any: ...

    def load_model(self, version: int) -> Classifier: ...


@runtime_checkable
class BinaryArtifacts(Protocol):
    """A registry that stores binary artifacts of a version (the fast path's compiled model):
    ``MlflowRegistry``; a drill's staging registry does not."""

    def load_bytes_artifact(self, version: int, name: str, run_id: str | None = None) -> bytes: ...

    def log_bytes_artifact(self, version: int, name: str, data: bytes) -> None: ...


class TargetsReader(Protocol):
    """What every serving replica polls: aliases and one registered-model tag."""

    def aliases_and_tag(self, key: str) -> tuple[dict[str, int | None], str | None]: ...


class ModelRegistry(VersionReader, TargetsReader, Protocol):
    model_name: str
    config: RegistryConfig

    def aliases(self) -> dict[str, int | None]: ...

    def model_tag(self, key: str) -> str | None: ...

    def set_model_tag(self, key: str, value: str) -> None: ...

    def versions(self) -> list[ModelVersion]: ...

    def set_alias(self, alias: str, version: int) -> None: ...

    def delete_alias(self, alias: str) -> None: ...

    def log_json_artifact(self, version: int, name: str, document: Any) -> None: ...

    def set_version_tag(self, version: int, key: str, value: str) -> None: ...

    def delete_version_tag(self, version: int, key: str) -> None: ...

    def log_version(
        self,
        model: Any,
        input_example: pd.DataFrame,
        params: dict[str, Any],
        metrics: dict[str, float],
        tags: dict[str, str],
        artifacts: dict[str, Any],
        pip_requirements: list[str],
    ) -> int: ...
