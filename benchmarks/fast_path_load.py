"""Load time of a served version: the fast path converted at load against the stored artifact.

    .venv/bin/python benchmarks/fast_path_load.py [--project DIR] [--version N] [--rounds 5]

Without ``--project`` it makes a throw-away copy of the example project, ingests Jan-Mar 2013,
materializes it and trains Jan-Feb with the default trainer (so the version carries its stored
fast path). Then, in alternating rounds, it times ``load_verified`` (what a serving replica runs
when an alias moves to the version) twice:

- **convert at load**: through a view of the registry without binary artifacts, so the
  ensemble is compiled by treelite and checked on probe rows in the serving process (what every
  version did before the artifact was stored, and what versions without it still do);
- **stored artifact**: the registry itself: download the artifact, check its sha256,
  deserialise it, check the fallbacks row.

and, apart, the fast-path step alone (``fast_path.convert_at_load`` against
``fast_path.select``) on an already loaded model. Medians and extremes in ms. Figures only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]


def utc(text: str):
    import pandas as pd

    return pd.Timestamp(text, tz="UTC").to_pydatetime()


class WithoutArtifacts:
    """The registry's versions, models and JSON artifacts; no binary artifacts."""

    def __init__(self, registry: Any) -> None:
        self._registry = registry

    def version(self, version: int) -> Any:
        return self._registry.version(version)

    def load_json_artifact(self, version: int, name: str) -> Any:
        return self._registry.load_json_artifact(version, name)

    def load_model(self, version: int) -> Any:
        return self._registry.load_model(version)


def prepared(folder: Path) -> tuple[Path, int]:
    from prodguard import app, wiring
    from prodguard.app import alerter_for
    from prodguard.config import load_settings
    from prodguard.ingestion.pipeline import Ingestor
    from prodguard_flights.loader import FlightsLoader

    root = folder / "project"
    root.mkdir()
    shutil.copy(ROOT / "prodguard.yaml", root / "prodguard.yaml")
    for name in ("expectations", "mlruns_config", "feature_repo"):
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    settings = load_settings(root / "prodguard.yaml", environ={})
    print("ingesting Jan-Mar 2013 and training Jan-Feb ...", flush=True)
    ingestor = Ingestor(settings, alerter_for(settings), loader=FlightsLoader())
    ingestor.ingest_window(utc("2013-01-01"), utc("2013-04-01"))
    wiring.feature_store(settings).materialize(until=utc("2013-04-01"))
    result = app.train(settings, utc("2013-01-01"), utc("2013-03-01"), actor="benchmark")
    print(f"v{result.version}: {result.scoring}", flush=True)
    return root, result.version


def ms(values: list[float]) -> str:
    return (
        f"median {statistics.median(values):8.1f} ms   min {min(values):8.1f}   "
        f"max {max(values):8.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path)
    parser.add_argument("--version", type=int)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    from prodguard import wiring
    from prodguard.config import load_settings
    from prodguard.features.feast_adapter import feature_contract
    from prodguard.registry.lineage import FAST_PATH_ARTIFACT, Lineage
    from prodguard.serving import fast_path
    from prodguard.serving.fast_path import load_verified

    with tempfile.TemporaryDirectory(prefix="prodguard-fastpath-") as tmp:
        if args.project is None:
            root, version = prepared(Path(tmp))
        else:
            root, version = args.project, args.version
        settings = load_settings(root / "prodguard.yaml", environ={})
        registry = wiring.registry_operations(settings).registry
        version = version or registry.aliases()["champion"]
        contract = feature_contract(wiring.feature_store(settings).versions())
        bare = WithoutArtifacts(registry)
        load_verified(registry, contract, version)  # warm: imports, first download
        converted, stored = [], []
        for _ in range(args.rounds):
            for view, into in ((bare, converted), (registry, stored)):
                began = time.perf_counter()
                loaded = load_verified(view, contract, version)
                into.append((time.perf_counter() - began) * 1000)
        print(f"\nv{version}, load_verified, {args.rounds} alternating rounds:")
        print(f"  convert at load   {ms(converted)}")
        print(f"  stored artifact   {ms(stored)}")

        found = Lineage.from_tags(registry.version(version).tags)
        assert found is not None
        step_converted, step_stored = [], []
        for _ in range(args.rounds):
            for run, into in (
                (lambda: fast_path.convert_at_load(loaded), step_converted),
                (lambda: fast_path.select(registry, loaded, found), step_stored),
            ):
                began = time.perf_counter()
                scorer, how = run()
                into.append((time.perf_counter() - began) * 1000)
        print("the fast-path step alone (model already loaded):")
        print(f"  convert at load   {ms(step_converted)}")
        print(f"  stored artifact   {ms(step_stored)}   ({how})")
        print(f"artifact: {len(registry.load_bytes_artifact(version, FAST_PATH_ARTIFACT)):,} bytes")
        parts(registry, loaded, version, args.rounds)
        registration(settings, loaded, found)


def registration(settings: Any, loaded: Any, found: Any) -> None:
    """What recording the fast path adds to a registration: the evaluation rows as serving
    builds them, the model and the compiled ensemble on them (twice: before and after
    serialisation)."""
    from dataclasses import replace

    from prodguard import wiring
    from prodguard.registry.lineage import split_window
    from prodguard.serving.fast_path import compile_version
    from prodguard.serving.treelite_adapter import probe_rows
    from prodguard.training.dataset import build_frame

    features = build_frame(
        settings, wiring.feature_store(settings), *split_window(found.eval_window)
    ).features
    began = time.perf_counter()
    rows = features[list(loaded.columns)].to_dict("records")
    rows += probe_rows(loaded.fallbacks, loaded.categories)
    tags, data = compile_version(replace(loaded, scorer=None), rows)
    took = time.perf_counter() - began
    print(f"registration: compile_version on {len(rows):,} rows {took:.2f} s ({tags})")


def parts(registry: Any, loaded: Any, version: int, rounds: int) -> None:
    """Where the step's time goes: the pieces of each path, medians."""
    import treelite
    import treelite.sklearn

    from prodguard.registry.lineage import FAST_PATH_ARTIFACT, RUN_ID
    from prodguard.serving import treelite_adapter
    from prodguard.serving.treelite_adapter import probe_rows
    from prodguard.tasks import ModelScorer

    run_id = registry.version(version).tags[RUN_ID]
    data = registry.load_bytes_artifact(version, FAST_PATH_ARTIFACT, run_id)
    estimator = loaded.pipeline.steps[-1][1]
    probes = loaded.frame(probe_rows(loaded.fallbacks, loaded.categories))
    pieces = {
        "download the artifact": lambda: registry.load_bytes_artifact(
            version, FAST_PATH_ARTIFACT, run_id
        ),
        "read the version (a registry read)": lambda: registry.version(version),
        "sha256 of it": lambda: __import__("hashlib").sha256(data).hexdigest(),
        "treelite deserialise": lambda: treelite.Model.deserialize_bytes(data),
        "treelite import_model (convert)": lambda: treelite.sklearn.import_model(estimator),
        "encoder lookup (both paths)": lambda: treelite_adapter._structure(
            loaded.pipeline, loaded.columns
        ),
        f"probe rows, model itself ({len(probes)} rows)": lambda: ModelScorer(
            loaded.pipeline, loaded.spec.task
        ).raw(probes),
    }
    print("pieces (median ms):")
    for name, run in pieces.items():
        took = []
        for _ in range(rounds):
            began = time.perf_counter()
            run()
            took.append((time.perf_counter() - began) * 1000)
        print(f"  {name:<40} {statistics.median(took):8.1f}")


if __name__ == "__main__":
    main()
