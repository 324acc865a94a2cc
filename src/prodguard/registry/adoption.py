"""Adopt a model trained outside prodguard: check it against the project, record the lineage
``prodguard train`` records, register it under ``model.name`` and make it the candidate.

The model is any MLflow model that loads as a pyfunc (the sklearn flavor is served natively; any
other through its pyfunc, which must return class probabilities for a classifier and one value
per row for a regressor) with a signature whose inputs are the feature service's features plus
the request features. Its training rows are rebuilt point-in-time
from the feature store for the window it was trained on (or read from a frame the team points
at): their statistics become the version's reference (fallbacks, PSI bins). It is evaluated on a
held-out window with the metrics of its task. From then on it is a version like any other.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from prodguard.config import Settings
from prodguard.errors import InputError, ModelContractError, TrainingError, first_line
from prodguard.features.feast_adapter import feature_contract
from prodguard.registry import lineage as tags_of
from prodguard.registry.mlflow_adapter import ForeignModel, same_label
from prodguard.registry.operations import RegistryOperations
from prodguard.tasks import ModelScorer, Task, TaskSpec, check_output, model_classes
from prodguard.training.dataset import TrainingFrame, build_frame
from prodguard.training.model import evaluate, prepare
from prodguard.training.reference import reference_stats
from prodguard.training.trainer import _lineage

TASKS = tuple(t.value for t in Task)
SAMPLE_ROWS = 5


class ModelAdopter(Protocol):
    """What adoption needs of the registry besides alias moves (``MlflowRegistry``)."""

    def open_model(
        self, uri: str, classifier: bool = True, classes: tuple[Any, ...] = ()
    ) -> ForeignModel: ...

    def adopt_version(
        self,
        found: ForeignModel,
        params: dict[str, Any],
        metrics: dict[str, float],
        tags: dict[str, str],
        artifacts: dict[str, Any],
    ) -> int: ...


@dataclass(frozen=True)
class AdoptWindows:
    train_start: datetime
    train_end: datetime
    eval_start: datetime
    eval_end: datetime
    train_frame: Path | None = None  # the training rows, instead of rebuilding them


@dataclass(frozen=True)
class AdoptResult:
    version: int
    registered: bool  # False when the URI already named a version of the project's model
    task: str
    metrics: dict[str, float]
    rows_train: int
    rows_eval: int
    seconds: dict[str, float]  # load, frames, evaluate, register
    scoring: str = ""  # how serving will score it: the fast path with its parity, or why not


def adopt(
    settings: Settings,
    store: Any,
    operations: RegistryOperations,
    adopter: ModelAdopter,
    suite_digests: dict[str, list[str]],
    model_uri: str,
    task: str | None,
    windows: AdoptWindows,
    actor: str,
    classes: tuple[Any, ...] = (),
) -> AdoptResult:
    """``store`` is the Feast adapter, ``adopter`` the registry ``operations`` move aliases on;
    ``suite_digests`` names, per source, the suites that
    validated the rows of the training window; ``classes``: the labels of the columns of a
    classifier pyfunc that returns an array (``--classes``)."""
    model = settings.model
    if model is None:
        raise TrainingError("prodguard.yaml has no 'model' section")
    task = task or model.task
    if task not in TASKS:
        raise InputError(f"--task must be one of {', '.join(TASKS)}, not '{task}'")
    if windows.train_end <= windows.train_start or windows.eval_end <= windows.eval_start:
        raise InputError("each window's end must be after its start")
    seconds: dict[str, float] = {}
    began = time.perf_counter()
    registry = operations.registry
    found = adopter.open_model(model_uri, Task(task).classifier, classes)
    adopted = found.registered_version
    if adopted is not None and registry.version(adopted).tags.get(tags_of.ARTIFACT_DIGEST):
        raise ModelContractError(
            f"v{adopted} of '{model.name}' already carries prodguard lineage; use "
            f"`prodguard register --version {adopted}` to make it the candidate"
        )
    seconds["load"] = time.perf_counter() - began

    began = time.perf_counter()
    held_out = build_frame(settings, store, windows.eval_start, windows.eval_end)
    columns = check_signature(found, list(held_out.features.columns))
    train = _training_frame(settings, store, windows, columns)
    seconds["frames"] = time.perf_counter() - began

    began = time.perf_counter()
    spec = check_task(found, Task(task), model.threshold, model.positive_class, held_out, columns)
    try:
        metrics, calibration = evaluate(
            found.model, spec, held_out.features[columns], held_out.label
        )
    except Exception as exc:  # noqa: BLE001 - whatever the team's model raises on a row
        raise ModelContractError(
            f"the model at {found.uri} fails to score the held-out rows ({type(exc).__name__}: "
            f"{first_line(exc, 160)}); check its preprocessing and signature"
        ) from None
    seconds["evaluate"] = time.perf_counter() - began

    began = time.perf_counter()
    ordered = replace(train, features=train.features[columns])  # the signature's order
    held = replace(held_out, features=held_out.features[columns])
    stats = reference_stats(ordered.features)
    versions = store.versions()
    views = {v.name: v.version for v in versions}
    lineage = _lineage(
        settings, ordered, held, views, feature_contract(versions), suite_digests, stats
    )
    lineage[tags_of.ADOPTED_FROM.removeprefix(tags_of.PREFIX)] = model_uri
    artifacts: dict[str, Any] = {
        tags_of.REFERENCE_STATS_JSON: stats,
        tags_of.LINEAGE_JSON: {**lineage, "metrics": metrics},
    }
    if calibration:
        artifacts[tags_of.CALIBRATION_JSON] = calibration
    tags = {**tags_of.registration_tags(lineage, metrics), **spec.tags()}
    version = adopter.adopt_version(
        found,
        params={
            "task": task,
            "threshold": model.threshold,
            "train_start": windows.train_start.isoformat(),
            "train_end": windows.train_end.isoformat(),
        },
        metrics={f"eval_{k}": v for k, v in metrics.items()},
        tags=tags,
        artifacts=artifacts,
    )
    from prodguard.serving.fast_path import record

    scoring = record(registry, version, found.model, spec, tags, stats, held.features)
    operations.set_candidate(version, actor=actor, reason=f"adopted from {model_uri}")
    seconds["register"] = time.perf_counter() - began
    return AdoptResult(
        version=version,
        registered=found.registered_version is None,
        task=task,
        metrics=metrics,
        rows_train=len(train),
        rows_eval=len(held_out),
        seconds=seconds,
        scoring=scoring,
    )


def check_signature(found: ForeignModel, expected: list[str]) -> list[str]:
    """The model's input columns in its signature's order; ModelContractError naming the
    missing and extra columns when they are not the project's features."""
    if found.inputs is None:
        raise ModelContractError(
            f"the model at {found.uri} has no input signature with column names; log it with "
            "mlflow.sklearn.log_model(model, name=..., signature=infer_signature(X, y)) where X "
            "is the training frame"
        )
    names = [name for name, _ in found.inputs]
    missing = [c for c in expected if c not in names]
    extra = [c for c in names if c not in expected]
    if missing or extra:
        parts = ([f"missing {missing}"] if missing else []) + ([f"extra {extra}"] if extra else [])
        raise ModelContractError(
            f"the model's signature does not match the feature service and request features: "
            f"{'; '.join(parts)}; retrain on the columns of the feature service "
            "(model.request_features + feature_store.feature_service)"
        )
    return names


def check_task(
    found: ForeignModel,
    task: Task,
    threshold: float,
    positive: Any,
    held_out: TrainingFrame,
    columns: list[str],
) -> TaskSpec:
    """The model's task spec (its classes), checked against what it returns for a few held-out
    rows; ModelContractError (one line) when they do not fit the declared task."""
    model = found.model
    declared = f"declared '{task.value}' (--task or model.task)"
    pyfunc = found.flavor != "sklearn"
    if task is Task.REGRESSION and hasattr(model, "predict_proba"):
        raise ModelContractError(
            f"the model at {found.uri} is {declared} but is a classifier (it has "
            "predict_proba); declare binary or multiclass"
        )
    if task.classifier and not hasattr(model, "predict_proba"):
        raise ModelContractError(
            f"the model at {found.uri} is {declared} but has no predict_proba (a regressor?); "
            "declare regression"
        )
    try:
        raw = ModelScorer(model, task).raw(prepare(held_out.features[columns].head(SAMPLE_ROWS)))
    except ModelContractError as exc:  # a pyfunc that returns no probabilities
        raise ModelContractError(f"the model at {found.uri} is {declared} but {exc}") from None
    except Exception as exc:  # noqa: BLE001 - whatever the team's model raises on a row
        raise ModelContractError(
            f"the model at {found.uri} fails to score the project's rows ({type(exc).__name__}: "
            f"{first_line(exc, 160)}); check its preprocessing"
        ) from None
    classes = model_classes(model) if task.classifier else ()
    if pyfunc and task.classifier:  # the pyfunc's labels as the held-out labels spell them
        classes = _as_labels(classes, held_out.label)
        unlabelled = not classes and (
            task is Task.MULTICLASS or not set(held_out.label.dropna().unique()) <= {0, 1}
        )
        if unlabelled:
            raise ModelContractError(
                f"the model at {found.uri} returns an array of class probabilities without "
                "class labels; pass --classes (the labels in its column order) or return a "
                "DataFrame whose columns are the labels"
            )
    spec = TaskSpec(task, classes, threshold, positive)
    problem = check_output(spec, raw)
    if problem:
        raise ModelContractError(f"the model at {found.uri}: {problem}")
    if classes and len(classes) != np.shape(raw)[1]:
        raise ModelContractError(
            f"the model at {found.uri} returns {np.shape(raw)[1]} class probabilities but "
            f"{len(classes)} class labels are given (--classes); name one label per column"
        )
    return spec


def parse_classes(text: str | None) -> tuple[Any, ...]:
    """``--classes a,b,c`` as labels: numbers where they parse as JSON numbers, else strings."""
    if not text:
        return ()
    labels: list[Any] = []
    for item in (part.strip() for part in text.split(",")):
        try:
            value = json.loads(item)
        except ValueError:
            value = item
        labels.append(value if isinstance(value, (int, float)) else item)
    return tuple(labels)


def _as_labels(classes: tuple[Any, ...], labels: pd.Series) -> tuple[Any, ...]:
    """Each class as the held-out label it names (a frame's columns are strings)."""
    seen = [v.item() if isinstance(v, np.generic) else v for v in labels.dropna().unique()]
    return tuple(next((v for v in seen if same_label(v, c)), c) for c in classes)


def _training_frame(
    settings: Settings, store: Any, windows: AdoptWindows, columns: list[str]
) -> TrainingFrame:
    if windows.train_frame is None:
        return build_frame(settings, store, windows.train_start, windows.train_end)
    path = windows.train_frame
    label = settings.model.label if settings.model else ""
    try:
        frame = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise InputError(f"--train-frame {path}: cannot read it ({type(exc).__name__})") from None
    absent = [c for c in [*columns, label] if c not in frame.columns]
    if absent:
        raise InputError(
            f"--train-frame {path} lacks columns {absent}; it must hold the model's input "
            f"columns and the label '{label}'"
        )
    labelled = frame[frame[label].notna()].reset_index(drop=True)
    return TrainingFrame(
        features=labelled[columns],
        label=labelled[label],
        entities=pd.DataFrame(index=labelled.index),
        start=windows.train_start,
        end=windows.train_end,
        unlabelled=len(frame) - len(labelled),
    )
