"""``prodguard init``: write a new project from a team's data files (no prompts, no overwrite)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from prodguard.errors import InputError
from prodguard.scaffold import drafts
from prodguard.scaffold.profile import profile

TASKS = ("binary", "multiclass", "regression")


@dataclass(frozen=True)
class InitResult:
    root: Path
    files: dict[str, int]  # path relative to root -> lines written


def init_project(
    root: Path,
    data: list[Path],
    timestamp: str,
    entity: str,
    label: str,
    task: str,
    name: str | None = None,
) -> InitResult:
    """Draft a project in ``root`` from ``data`` (the first file holds the labelled rows)."""
    if task not in TASKS:
        raise InputError(f"--task must be one of {', '.join(TASKS)}, not '{task}'")
    if not data:
        raise InputError("give at least one --data file (csv or parquet)")
    project = _identifier(name or root.resolve().name)
    if (root / "prodguard.yaml").exists():
        raise InputError(
            f"{root} already holds a project (prodguard.yaml); init writes only into a new or "
            "empty folder"
        )
    sources = []
    for index, path in enumerate(data):
        frame = _read(path)
        needed = [timestamp, entity, *([label] if index == 0 else [])]
        absent = [c for c in needed if c not in frame.columns]
        if absent:
            raise InputError(
                f"--data {path.name} has no column(s) {absent}; its columns: "
                f"{', '.join(map(str, frame.columns[:15]))}"
            )
        try:
            frame[timestamp] = pd.to_datetime(frame[timestamp], utc=True)
        except (ValueError, TypeError):
            raise InputError(
                f"--timestamp column '{timestamp}' of {path.name} is not a time"
            ) from None
        if index == 0:
            labelled = frame[timestamp]
        sources.append(
            drafts.Source(
                name=_identifier(path.stem),
                path=path.resolve(),
                timestamp=timestamp,
                columns=profile(frame),
                ttl=drafts.entity_ttl(frame, entity, timestamp),
                rows=len(frame),
            )
        )
    if len({s.name for s in sources}) < len(sources):
        raise InputError("two --data files have the same name; rename one")
    per_day = _rows_per_day(labelled)
    plan = drafts.Plan(project, f"{project}_project", task, entity, label, sources, per_day)
    texts = {
        "prodguard.yaml": drafts.settings_yaml(plan),
        "feature_repo/feature_store.yaml": drafts.FEATURE_STORE_YAML.format(name=project),
        "feature_repo/definitions.py": drafts.definitions(plan),
        "mlruns_config/local.yaml": drafts.REGISTRY_YAML,
        f"{plan.package}/__init__.py": f'"""The {project} project (prodguard init)."""\n',
        f"{plan.package}/loader.py": drafts.loader(plan),
        f"{plan.package}/features.py": drafts.features(plan),
    }
    for source in sources:
        texts[f"expectations/{source.name}.json"] = (
            json.dumps(drafts.suite(source, plan), indent=2) + "\n"
        )
    clashes = [p for p in texts if (root / p).exists()]
    if clashes:
        raise InputError(f"{root} already has {clashes[:3]}; init never overwrites a file")
    for relative, text in texts.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    return InitResult(root, {p: t.count("\n") for p, t in texts.items()})


def _rows_per_day(stamps: pd.Series) -> float | None:
    """The labelled rows' rate: rows after the first per day of the period they span (None
    when they span no time)."""
    present = stamps.dropna()
    days = (present.max() - present.min()).total_seconds() / 86400 if len(present) else 0.0
    return (len(present) - 1) / days if days > 0 else None


def _read(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise InputError(f"--data {path} not found")
    try:
        return pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise InputError(
            f"--data {path.name} cannot be read as {'CSV' if path.suffix == '.csv' else 'parquet'}"
            f" ({type(exc).__name__})"
        ) from None


def _identifier(text: str) -> str:
    name = re.sub(r"[^0-9a-zA-Z_]+", "_", text).strip("_").lower() or "project"
    return f"p_{name}" if name[0].isdigit() else name
