"""Train on a window, evaluate on the days after it, register with full lineage as candidate."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from prodguard.config import Settings
from prodguard.digests import document_digest, frame_digest
from prodguard.errors import TrainingError
from prodguard.features.feast_adapter import feature_contract
from prodguard.project import import_object
from prodguard.registry.lineage import (
    CALIBRATION_JSON,
    LINEAGE_JSON,
    REFERENCE_STATS_JSON,
    registration_tags,
)
from prodguard.registry.operations import RegistryOperations
from prodguard.tasks import ModelScorer, Task, TaskSpec, check_model, check_output, model_classes
from prodguard.training.dataset import TrainingFrame, build_frame, describe_columns
from prodguard.training.model import evaluate, prepare, train_default
from prodguard.training.reference import fallbacks, reference_stats

PINNED = ("scikit-learn", "pandas", "numpy", "scipy")


@dataclass(frozen=True)
class TrainResult:
    version: int
    metrics: dict[str, float]
    rows_train: int
    rows_eval: int
    seconds_train: float
    seconds_register: float
    tags: dict[str, str]
    scoring: str = ""  # how serving will score it: the fast path with its parity, or why not


def code_version(root: Path) -> str:
    """The git commit of the project when available, else the package version."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        )
        if commit.returncode == 0 and commit.stdout.strip():
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=root,
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
            return commit.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "prodguard-" + importlib.metadata.version("prodguard")


def pip_requirements() -> list[str]:
    return [f"{name}=={importlib.metadata.version(name)}" for name in PINNED]


def train_and_register(
    settings: Settings,
    store: Any,
    operations: RegistryOperations,
    suite_digests: dict[str, list[str]],
    start: datetime,
    end: datetime,
    actor: str,
) -> TrainResult:
    """``store`` is the Feast adapter (historical features, feature refs, versions);
    ``suite_digests`` names, per source, the suites that validated the training rows."""
    model = settings.model
    if model is None:
        raise TrainingError("prodguard.yaml has no 'model' section")
    if end <= start:
        raise TrainingError("--end must be after --start")
    began = time.perf_counter()
    train = build_frame(settings, store, start, end)
    eval_end = end + timedelta(days=model.evaluation_days)
    held_out = build_frame(settings, store, end, eval_end)
    task = Task(model.task)
    if train.label.nunique() < 2:
        raise TrainingError("the training window has a single label value; widen the window")
    if task is Task.BINARY and train.label.nunique() > 2:
        raise TrainingError(
            f"model.task is binary but label '{model.label}' has {train.label.nunique()} values; "
            "set model.task: multiclass (or regression)"
        )
    trainer = import_object(model.trainer, "model.trainer") if model.trainer else train_default
    pipeline = trainer(prepare(train.features), train.label, task=task.value, seed=model.seed)
    spec = task_spec(pipeline, task, model.threshold, model.positive_class, train.features)
    metrics, calibration = evaluate(pipeline, spec, held_out.features, held_out.label)
    seconds_train = time.perf_counter() - began

    stats = reference_stats(train.features)
    versions = store.versions()
    views = {v.name: v.version for v in versions}
    store_features = feature_contract(versions)
    lineage = _lineage(settings, train, held_out, views, store_features, suite_digests, stats)
    tags = {**registration_tags(lineage, metrics), **spec.tags()}

    began = time.perf_counter()
    version = operations.registry.log_version(
        pipeline,
        input_example=prepare(train.features.head(5)),
        params={
            "seed": model.seed,
            "threshold": model.threshold,
            "train_start": start.isoformat(),
            "train_end": end.isoformat(),
            "task": task.value,
            **_hgb_params(pipeline),
        },
        metrics={f"eval_{k}": v for k, v in metrics.items()},
        tags=tags,
        artifacts={
            REFERENCE_STATS_JSON: stats,
            **({CALIBRATION_JSON: calibration} if calibration else {}),
            LINEAGE_JSON: {**lineage, "metrics": metrics},
        },
        pip_requirements=pip_requirements(),
    )
    from prodguard.serving.fast_path import record

    scoring = record(operations.registry, version, pipeline, spec, tags, stats, held_out.features)
    operations.set_candidate(
        version,
        actor=actor,
        reason=f"trained on {start:%Y-%m-%d}..{end:%Y-%m-%d}",
    )
    return TrainResult(
        version=version,
        metrics=metrics,
        rows_train=len(train),
        rows_eval=len(held_out),
        seconds_train=seconds_train,
        seconds_register=time.perf_counter() - began,
        tags=tags,
        scoring=scoring,
    )


def task_spec(model: Any, task: Task, threshold: float, positive: Any, features: Any) -> TaskSpec:
    """The trained model's task with its classes, checked against what it returns for a few
    training rows (TrainingError: one line saying what it returns instead)."""
    classes = model_classes(model) if task.classifier else ()
    if positive is not None and positive not in classes and str(positive) not in map(str, classes):
        raise TrainingError(
            f"model.positive_class {positive!r} is not one of the trained classes {list(classes)}"
        )
    spec = TaskSpec(task, classes, threshold, positive)
    problem = check_model(model, task) or check_output(
        spec, ModelScorer(model, task).raw(prepare(features.head(5)))
    )
    if problem:
        raise TrainingError(f"{problem}; fix model.task or model.trainer")
    return spec


def _hgb_params(model: Any) -> dict[str, Any]:
    """The default pipeline's main hyper-parameters (none for a project's own trainer)."""
    steps = getattr(model, "named_steps", {})
    if "model" not in steps:
        return {}
    return {
        f"hgb_{k}": v
        for k, v in steps["model"].get_params().items()
        if k in ("learning_rate", "max_iter", "max_leaf_nodes", "l2_regularization")
    }


def _lineage(
    settings: Settings,
    train: TrainingFrame,
    held_out: TrainingFrame,
    views: dict[str, int | None],
    store_features: list[list[str]],
    suite_digests: dict[str, list[str]],
    stats: dict[str, Any],
) -> dict[str, str]:
    root = settings.config_path.parent if settings.config_path else Path.cwd()
    data = train.features.assign(__label=train.label.to_numpy())
    return {
        "train_window": f"{train.start.isoformat()}/{train.end.isoformat()}",
        "eval_window": f"{held_out.start.isoformat()}/{held_out.end.isoformat()}",
        "rows_train": str(len(train)),
        "rows_eval": str(len(held_out)),
        "rows_unlabelled": str(train.unlabelled),
        "dataset_digest": frame_digest(data),
        "feature_service": settings.feature_store.feature_service,
        "feature_views": json.dumps(views, sort_keys=True),
        "store_features": json.dumps(store_features),
        "input_contract": json.dumps(describe_columns(train.features)),
        "suite_digests": json.dumps(suite_digests, sort_keys=True),
        "code_version": code_version(root),
        "seed": str(settings.model.seed if settings.model else ""),
        "reference_stats_digest": document_digest(stats),
        "fallbacks": json.dumps(fallbacks(stats), sort_keys=True),
    }
