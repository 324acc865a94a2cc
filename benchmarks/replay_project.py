"""The example project as the monitoring benchmarks replay it: a work folder holding a copy of
the project, its data ingested and a trained version (kept for later runs), and replayed logs
kept by name. Shared by ``monitoring_quality.py`` and ``incidents.py``."""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ("prodguard.yaml", "expectations", "mlruns_config", "feature_repo")


def half(request_id: str) -> bool:
    """A deterministic half of the requests (by id): baseline on one half, judge the other."""
    return hashlib.blake2b(request_id.encode(), digest_size=8).digest()[0] < 128


def example_settings(work: Path) -> Any:
    """The settings of the example project copied into ``work/project`` (a previous run's copy
    is reused as it is)."""
    from prodguard.config import load_settings

    project = work / "project"
    if not (project / "prodguard.yaml").exists():
        project.mkdir(parents=True, exist_ok=True)
        for name in PROJECT_FILES:
            source = ROOT / name
            copy = shutil.copytree if source.is_dir() else shutil.copy
            copy(source, project / name)
    return load_settings(project / "prodguard.yaml", environ={})


def trained_project(
    work: Path, ingest: tuple[datetime, datetime], train: tuple[datetime, datetime], actor: str
) -> tuple[Any, Any, int]:
    """(settings, registry, version): the project copied into ``work``, ``ingest`` ingested,
    materialized to the end of training, a version trained on ``train``; a previous run's
    folder is reused as it is."""
    from prodguard import app

    settings = example_settings(work)
    registry = app.registry_operations(settings).registry
    began = time.perf_counter()
    known = registry.versions()
    if known:  # a previous run's work folder: reuse its data, model and logs
        version = known[-1].version
    else:
        app.ingest(settings, *ingest)
        app.materialize(settings, until=train[1])
        version = app.train(settings, *train, actor=actor).version
    print(f"set-up (ingest, materialize, train v{version}): {time.perf_counter() - began:.0f} s")
    spec = settings.monitoring.window
    print(
        f"windows: {spec.minutes:g} min every {spec.step_minutes:g} min, min {spec.min_rows} rows"
    )
    return settings, registry, version


def replayer(work: Path, settings: Any, registry: Any, version: int) -> Callable[..., Any]:
    """``replayed(name, start, end, **options)``: the version's log of that replay, replayed
    once (kept as ``work/<name>.db``, so later runs reuse it)."""
    from prodguard.monitoring.jobs import replay_version
    from prodguard.serving.prediction_log import SqlitePredictionLog

    def replayed(name: str, start: datetime, end: datetime, **options: Any) -> Any:
        path = work / f"{name}.db"
        if not path.exists():
            log = SqlitePredictionLog(work / f"{name}.partial.db", "NORMAL")
            result = replay_version(settings, registry, version, start, end, log, **options)
            log.close()
            (work / f"{name}.partial.db").rename(path)
            print(f"  replayed {name}: {result.predicted} predictions in {result.seconds:.0f} s")
        return SqlitePredictionLog(path, "NORMAL")

    return replayed
