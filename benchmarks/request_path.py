"""The request path in-process: ``Predictor`` stages for one row and for batches.

    .venv/bin/python benchmarks/request_path.py [--config prodguard.yaml] [--rounds 15]
        [--singles 500] [--no-standby] [--aggregates] [--json]

On a served project (``make demo``, or ingest, materialize, train, promote) it builds the
serving objects as ``prodguard serve`` does (``wiring.build_serving``: the project's registry,
online store and models), with a prediction log of its own in a temporary folder and no shadow
scoring (``--no-standby``: as if no standby were loaded), and asks the benchmark's requests
(``prodguard.bench.workload``: rows of the model's source asked about just after the time the
online store is materialized up to). It prints the median and p99 of each stage (``checks``,
``features``, ``model``, ``log``, ``total``, in ms) and of the process's CPU time per call
(``cpu``: all its threads; steadier than the wall clock on a shared machine) for
``predict_each`` of 1,000 and 100 rows (what ``/predict_batch`` calls) and ``predict`` of one
row (``/predict``), without HTTP; and, apart, the project's ``request_features`` alone on a
one-row frame (the part of ``checks`` that is the project's), and its
``request_features_columns`` on one row's columns when the project has one. Figures only;
nothing here asserts a time.

To compare two versions of the code in one run, run it alternately with each one first on the
path (``PYTHONPATH=<tree>/src``) against the same project.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

STAGES = ("checks", "features", "model", "log", "total", "cpu")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="prodguard.yaml")
    parser.add_argument("--rounds", type=int, default=15, help="calls per batch size")
    parser.add_argument("--singles", type=int, default=500, help="one-row calls")
    parser.add_argument(
        "--no-standby", action="store_true", help="serve as if no standby were loaded"
    )
    parser.add_argument(
        "--aggregates", action="store_true", help="with the replica's window aggregates on"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    from prodguard import wiring
    from prodguard.bench.workload import guarded_bodies
    from prodguard.config import load_settings
    from prodguard.serving.prediction_log import SqlitePredictionLog
    from prodguard.telemetry import disable_telemetry

    disable_telemetry()
    settings = load_settings(Path(args.config), environ=dict(os.environ))
    assert settings.serving is not None
    settings = settings.model_copy(
        update={"serving": settings.serving.model_copy(update={"shadow_sample": 0.0})}
    )
    at = wiring.feature_store(settings).materialized_until()
    if at is None:
        print("the online store was never materialized: run `make demo` first", file=sys.stderr)
        return 2
    built = wiring.build_serving(settings)
    with tempfile.TemporaryDirectory(prefix="prodguard-request-path-") as folder:
        built.log = SqlitePredictionLog(Path(folder) / "predictions.db")
        if args.aggregates:  # as `serve` wraps it, the aggregate store in the temporary folder
            environ = {
                "PRODGUARD_PATHS__DATA_DIR": folder,
                "PRODGUARD_MONITORING__AGGREGATES__ENABLED": "1",
            }
            on = load_settings(Path(args.config), environ={**os.environ, **environ})
            registry = wiring.registry_operations(settings).registry
            built.log = wiring.aggregating(on, built.log, registry, built.clock)
        built.predictor.answers.log = built.log
        built.follower.refresh()
        champion = built.follower.state.champion
        if champion is None:
            print("there is no champion: run `make demo` first", file=sys.stderr)
            return 2
        if args.no_standby:
            served = dataclasses.replace(built.follower.state, standby=None)
            built.predictor.state = lambda: served
        standby = built.predictor.state().standby
        print(f"standby: {'v' + str(standby.version) if standby else 'none'}", file=sys.stderr)
        bodies = guarded_bodies(settings, at, 1000, champion.categories, "path-")
        parse = built.request_model.model_validate
        built.predictor.warm_up(parse(bodies[0]).to_row())
        run = uuid.uuid4().hex[:8]
        calls = iter(range(10**9))

        def call(size: int) -> dict[str, float]:
            number = next(calls)
            chosen = bodies[number % len(bodies) :][:size] if size == 1 else bodies[:size]
            rows = [parse(body).to_row() for body in chosen]
            ids = [f"{run}-{number}-{i}" for i in range(size)]
            stages: dict[str, float] = {}
            cpu = time.process_time()
            if size == 1:
                built.predictor.predict(rows, ids, stages)
            else:
                built.predictor.predict_each(rows, ids, stages)
            return {"cpu": time.process_time() - cpu, **stages}

        for size in (1000, 1000, 100, 100, *[1] * 50):  # warm-up
            call(size)
        results = {
            "batch_1000": summary([call(1000) for _ in range(args.rounds)]),
            "batch_100": summary([call(100) for _ in range(args.rounds * 2)]),
            "single": summary([call(1) for _ in range(args.singles)]),
        }
        project = project_features(built.predictor.derive, bodies, parse, args.singles)
        columns_form = getattr(built.predictor, "derive_columns", None)  # older trees: none
        if columns_form is not None:
            project_columns = project_features(columns_form, bodies, parse, args.singles, True)
        built.predictor.close()
        built.log.close()
    if args.json:
        extra = {"request_features_columns_single": project_columns} if columns_form else {}
        print(json.dumps({**results, "request_features_single": project, **extra}, indent=2))
    else:
        print(f"{'call':<11} " + " ".join(f"{s + ' p50/p99':>17}" for s in STAGES))
        for name, figures in results.items():
            cells = [f"{figures[s]['p50']:.2f} / {figures[s]['p99']:.2f}" for s in STAGES]
            print(f"{name:<11} " + " ".join(f"{c:>17}" for c in cells))
        print(
            f"of the single call's checks, the project's request_features on its one-row frame: "
            f"{project['p50']:.2f} / {project['p99']:.2f}"
        )
        if columns_form is not None:
            print(
                "its request_features_columns on one row's columns: "
                f"{project_columns['p50']:.3f} / {project_columns['p99']:.3f}"
            )
    return 0


def project_features(
    derive: Any, bodies: list[Any], parse: Any, calls: int, columns: bool = False
) -> dict[str, float]:
    """p50 and p99 (ms) of the project's ``request_features`` alone on a one-row frame of
    request rows (``pd.DataFrame([row])``, built outside the timing): the part of the
    ``checks`` stage that is the project's, not prodguard's; ``columns``: of its columns form
    on the row's columns (``{field: [value]}``)."""
    import pandas as pd

    times = []
    for number in range(calls):
        row = parse(bodies[number % len(bodies)]).to_row()
        frame = {k: [v] for k, v in row.items()} if columns else pd.DataFrame([row])
        started = time.perf_counter()
        derive(frame)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {
        "p50": round(statistics.median(times), 3),
        "p99": round(times[min(len(times) - 1, int(0.99 * len(times)))], 3),
    }


def summary(runs: list[dict[str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for stage in STAGES:
        values = sorted(run[stage] * 1000 for run in runs)
        out[stage] = {
            "p50": round(statistics.median(values), 3),
            "p99": round(values[min(len(values) - 1, int(0.99 * len(values)))], 3),
        }
    return out


if __name__ == "__main__":
    started = time.perf_counter()
    code = main()
    print(f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    sys.exit(code)
