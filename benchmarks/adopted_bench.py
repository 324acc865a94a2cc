"""Issue 19's goals on adopted models of every task type: `prodguard bench` on the Chicago project.

    .venv/bin/python benchmarks/adopted_bench.py [--work DIR] [--tasks regression multiclass]
        [--requests 500] [--warmup 100] [--concurrency 1,4,16] [--compare PROJECT_DIR]
        [--json PATH]

It copies ``examples/chicago`` into ``DIR/chicago`` (default: a temporary folder; an existing
copy is reused, and the steps it already went through are skipped: ``DIR/steps.json``) and, for
each task, prepares a served project as its team would, through the CLI (``prodguard`` beside
this Python, cwd = the copy, ``--config`` of the task's yaml):

- ``ingest`` 2013-01-01..2014-05-01 and ``materialize --until 2014-05-01`` (each yaml has a
  ``data_dir`` of its own, so each task ingests its own copy of the same data);
- ``python train_outside.py --config YAML`` (the team's script, not prodguard's trainer: a
  regressor for ``prodguard.yaml``, a classifier for ``prodguard.multiclass.yaml``);
- ``adopt --model-uri models:/NAME/1`` (train 2013-01-01..2013-10-03, eval ..2014-01-01),
  ``baseline`` 2014-01-01..2014-04-01, ``promote``;

then reads how the champion is scored (``prodguard status --json``) and runs ``prodguard bench
--json`` on it, with the 1-minute load average before and after. ``--compare`` benches another
project with a champion (e.g. the flights demo) in the same window, read-only (bench writes its
prediction log to a folder of its own). Per task it prints the goals (value, goal, met, by) and
the ``where`` of each floor goal; ``--json`` writes everything, including each bench's JSON.

The bench's requests: rows of the model's source from the 4 weeks before the time the online
store is materialized up to, each asked about at that time + 1 minute. Chicago has one row a
day and one entity (the city), so every body is the same service day (the request id aside)
and reads the same online row: the traffic a day of this service sees. The script counts the
distinct bodies (``distinct_bodies``) so that this is visible, not assumed. Figures only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "chicago"
PRODGUARD = str(Path(sys.executable).with_name("prodguard"))
CONFIGS = {"regression": "prodguard.yaml", "multiclass": "prodguard.multiclass.yaml"}
MODELS = {"regression": "clark-lake-ridership", "multiclass": "clark-lake-level"}
INGEST = ("2013-01-01", "2014-05-01")
FIT = ("2013-01-01", "2014-01-01")  # train_outside.py: the last 90 days held out
ADOPT = ("2013-01-01", "2013-10-03", "2014-01-01")  # train start, eval start, eval end
BASELINE = ("2014-01-01", "2014-04-01")
ENV = {
    "OMP_NUM_THREADS": "1",
    "DO_NOT_TRACK": "1",
    "BENTOML_DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}


def environment() -> dict[str, str]:
    """This process's environment (PYTHONPATH included) without PRODGUARD_* settings."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PRODGUARD_")}
    return {**clean, **ENV}


def load() -> float:
    return round(os.getloadavg()[0], 2)


class Project:
    """The copy of examples/chicago and the steps already done in it (DIR/steps.json)."""

    def __init__(self, work: Path) -> None:
        self.root = work / "chicago"
        self.steps_file = work / "steps.json"
        if not self.root.exists():
            shutil.copytree(
                EXAMPLE,
                self.root,
                ignore=shutil.ignore_patterns("__pycache__", ".prodguard*", "mlruns"),
            )
        self.done: dict[str, float] = (
            json.loads(self.steps_file.read_text()) if self.steps_file.exists() else {}
        )

    def run(self, args: list[str], timeout: float = 1800) -> str:
        done = subprocess.run(
            args,
            cwd=self.root,
            env=environment(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}")
        return done.stdout

    def step(self, name: str, args: list[str]) -> None:
        """Run a step once: a step recorded in steps.json is skipped."""
        if name in self.done:
            print(f"  {name}: done before ({self.done[name]:.0f} s)", flush=True)
            return
        began = time.perf_counter()
        print(f"  {name} ...", end="", flush=True)
        last = self.run(args).strip().splitlines()[-1:] or [""]
        self.done[name] = round(time.perf_counter() - began, 1)
        self.steps_file.write_text(json.dumps(self.done, indent=1))
        print(f" {self.done[name]:.0f} s  {last[0][:100]}", flush=True)


def prepare(project: Project, task: str) -> None:
    config = ["--config", CONFIGS[task]]
    cli = [PRODGUARD, *config]
    train, evaluate, end = ADOPT
    project.step(f"{task} ingest", [*cli, "ingest", "--start", INGEST[0], "--end", INGEST[1]])
    project.step(f"{task} materialize", [*cli, "materialize", "--until", INGEST[1]])
    project.step(
        f"{task} train_outside.py",
        [sys.executable, "train_outside.py", *config, "--start", FIT[0], "--end", FIT[1]],
    )
    windows = ["--train-start", train, "--train-end", evaluate]
    windows += ["--eval-start", evaluate, "--eval-end", end]
    model_uri = f"models:/{MODELS[task]}/1"
    project.step(f"{task} adopt", [*cli, "adopt", "--model-uri", model_uri, *windows])
    project.step(
        f"{task} baseline", [*cli, "baseline", "--start", BASELINE[0], "--end", BASELINE[1]]
    )
    project.step(f"{task} promote", [*cli, "promote", "--reason", "adopted-bench"])


def distinct_bodies(config: Path, count: int) -> dict[str, int]:
    """How many of ``count`` bench bodies differ (request id aside), built as bench builds
    them (no category filter: the Chicago request has no categorical field)."""
    from prodguard import wiring
    from prodguard.bench import workload
    from prodguard.config import load_settings

    settings = load_settings(config, environ={})
    at = wiring.feature_store(settings).materialized_until()
    assert at is not None
    bodies = workload.guarded_bodies(settings, at, count, {}, "x-")
    seen = {json.dumps({k: v for k, v in b.items() if k != "request_id"}) for b in bodies}
    return {"bodies": len(bodies), "distinct": len(seen)}


def bench(cwd: Path, config: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """``prodguard bench --json`` in ``cwd`` (progress on stderr as it goes)."""
    command = [PRODGUARD, *config, "bench", "--json", "--requests", str(args.requests)]
    command += ["--warmup", str(args.warmup), "--concurrency", args.concurrency]
    status = subprocess.run(
        [PRODGUARD, *config, "status", "--json"],
        cwd=cwd,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    lineage = json.loads(status.stdout).get("lineage", {})
    scoring = lineage.get("champion", {}).get("scoring")
    before = load()
    began = time.perf_counter()
    done = subprocess.run(
        command, cwd=cwd, env=environment(), stdout=subprocess.PIPE, text=True, timeout=3600
    )
    if done.returncode != 0:
        raise SystemExit(f"prodguard bench in {cwd} exited {done.returncode}")
    return {
        "scoring": scoring,
        "load_1min_before": before,
        "load_1min_after": load(),
        "seconds": round(time.perf_counter() - began, 1),
        "bench": json.loads(done.stdout),
    }


def show(name: str, run: dict[str, Any]) -> None:
    report = run["bench"]
    print(
        f"\n{name}: champion v{report['setup']['champion']} scored by {run['scoring']}; "
        f"load {run['load_1min_before']} -> {run['load_1min_after']}; {run['seconds']:.0f} s",
        flush=True,
    )
    if "bodies" in run:
        print(f"  bench bodies: {run['bodies']['distinct']} distinct of {run['bodies']['bodies']}")
    print(f"  {'goal':<44} {'value':>10} {'goal':>8} {'met':>4} {'by':>7}")
    for goal, g in report["goals"].items():
        met = "yes" if g["met"] else "no"
        print(f"  {goal:<44} {g['value']:>10.3g} {g['goal']:>8} {met:>4} {g['by']:>6.2f}x")
    for goal, g in report["goals"].items():
        if g.get("where"):
            print(f"  where ({goal}): {g['where']}")


def side_by_side(runs: dict[str, dict[str, Any]]) -> None:
    names = list(runs)
    goals = list(next(iter(runs.values()))["bench"]["goals"])
    print("\n" + f"{'goal (value / by)':<44}" + "".join(f"{n:>22}" for n in names))
    for goal in goals:
        cells = []
        for name in names:
            g = runs[name]["bench"]["goals"].get(goal)
            cells.append(f"{g['value']:.3g} / {g['by']:.2f}x" if g else "-")
        print(f"{goal:<44}" + "".join(f"{c:>22}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="work folder (default: a temporary one)")
    parser.add_argument("--tasks", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--requests", type=int, default=500, help="per concurrency level")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--compare", type=Path, help="a project with a champion, benched too")
    parser.add_argument("--setup-only", action="store_true", help="prepare, do not bench")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="prodguard-adopted-"))
    work.mkdir(parents=True, exist_ok=True)
    project = Project(work.resolve())
    print(f"project copy: {project.root}", flush=True)
    for task in args.tasks:
        print(f"{task} ({CONFIGS[task]}, {MODELS[task]}):", flush=True)
        prepare(project, task)
    if args.setup_only:
        return
    runs: dict[str, dict[str, Any]] = {}
    for task in args.tasks:
        print(f"\nbench {task} (load {load()}) ...", flush=True)
        runs[task] = bench(project.root, ["--config", CONFIGS[task]], args)
        runs[task]["bodies"] = distinct_bodies(project.root / CONFIGS[task], 1000)
    if args.compare is not None:
        print(f"\nbench {args.compare} (load {load()}) ...", flush=True)
        runs[args.compare.name or "compare"] = bench(args.compare.resolve(), [], args)
    for name, run in runs.items():
        show(name, run)
    side_by_side(runs)
    if args.json is not None:
        document = {"work": str(work), "steps_s": project.done, "runs": runs}
        args.json.write_text(json.dumps(document, indent=1, default=str))
        print(f"\nwritten: {args.json}")


if __name__ == "__main__":
    main()
