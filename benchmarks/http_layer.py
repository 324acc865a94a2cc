"""The HTTP layer of ``/predict`` in-process: the guarded service's BentoML app with the
predictor answering at once, against the framework floor.

    .venv/bin/python benchmarks/http_layer.py [--config prodguard.yaml] [--requests 3000]
        [--rounds 3] [--code OLD/src NEW/src] [--json]

On a served project (``make demo``, or ingest, materialize, train, promote) each measurement
runs in a process of its own: the service's ASGI app (``service.to_asgi``, as ``bentoml serve``
builds it: BentoML's middlewares, the boundary, the request model's validation, the handler,
the response) driven without sockets, one request at a time, after 300 warm-up requests. For
``guarded`` the serving objects are built as ``prodguard serve`` builds them (a prediction log of
its own in a temporary folder), but ``Predictor.predict`` answers a fixed prediction and records
fixed stage timings in the metrics, as the real one does: what remains is everything
``prodguard bench`` reports as ``http`` except loopback and the client. ``floor`` is
``prodguard.bench.floor_service`` (the endpoint that returns a constant). It prints, per service
and code tree, the process's CPU time per request (all threads; steadier than the wall clock on
a shared machine) and the wall-clock p50, the medians over ``--rounds`` alternating rounds.

``--code`` puts each given ``src`` first on the path in turn (e.g. the main checkout and a
branch), so two versions are compared in the same alternating rounds. Figures only; nothing
here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

WARMUP = 300
FLOOR_FEATURES = {"a": "x", "b": 1.0}  # the floor accepts any non-empty dict of scalars


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="prodguard.yaml")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--code", nargs="*", default=[], help="src folders to alternate")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--one", choices=("guarded", "floor"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    config = str(Path(args.config).resolve())
    if args.one:
        print(json.dumps(_measure(args.one, config, args.requests)))
        return 0
    codes = args.code or [""]
    runs: dict[str, list[dict[str, float]]] = {}
    for round_ in range(args.rounds):
        # the first process of a round measured ~60 us/request less than the next with the same
        # code (2026-12-07): the trees take turns being first
        for code in codes if round_ % 2 == 0 else codes[::-1]:
            runs.setdefault(_label("guarded", code), []).append(
                _spawn("guarded", code, config, args.requests)
            )
        runs.setdefault("floor", []).append(_spawn("floor", codes[0], config, args.requests))
    summary = {
        name: {key: statistics.median(r[key]) for key in ("cpu_us", "wall_p50_us")}
        for name, r in ((n, {k: [m[k] for m in ms] for k in ms[0]}) for n, ms in runs.items())
    }
    floor = summary["floor"]["cpu_us"]
    for figures in summary.values():
        figures["cpu_over_floor_us"] = round(figures["cpu_us"] - floor, 1)
    if args.json:
        print(json.dumps({"load": os.getloadavg(), "services": summary, "runs": runs}, indent=1))
        return 0
    print(f"load average {os.getloadavg()[0]:.2f}; medians of {args.rounds} rounds")
    print(f"{'service':40s} {'CPU us/request':>15s} {'over floor':>11s} {'wall p50 us':>12s}")
    for name, figures in summary.items():
        print(
            f"{name:40s} {figures['cpu_us']:15.1f} {figures['cpu_over_floor_us']:11.1f} "
            f"{figures['wall_p50_us']:12.1f}"
        )
    return 0


def _label(service: str, code: str) -> str:
    return f"{service} ({code})" if code else service


def _spawn(service: str, code: str, config: str, requests: int) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if code:
        env["PYTHONPATH"] = os.pathsep.join([code, *filter(None, [env.get("PYTHONPATH")])])
    command = [sys.executable, __file__, "--config", config, "--requests", str(requests)]
    done = subprocess.run(
        [*command, "--one", service], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"{service} ({code or 'installed'}) failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _measure(service: str, config: str, requests: int) -> dict[str, float]:
    import asyncio
    import tempfile
    import time

    from prodguard.bench import benchmark
    from prodguard.config import load_settings

    settings = load_settings(Path(config))
    root = Path(tempfile.mkdtemp(prefix="prodguard-http-layer-"))
    os.environ.update(benchmark._environment(settings, benchmark._overlay(settings, root), 1))
    (root / "prometheus").mkdir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(root / "prometheus")  # as bentoml serve does
    from _bentoml_impl.loader import load
    from bentoml._internal.context import server_context

    server_context.service_type = "entry_service"
    if service == "guarded":
        _answer_at_once()
        loaded = load("prodguard.serving.bento_service:PredictionService", standalone_load=True)
    else:
        loaded = load(benchmark.FLOOR_SERVICE, standalone_load=True)
    server_context.service_name = loaded.name
    app = loaded.to_asgi(is_main=True)
    stamp = time.time_ns()

    def body(i: int) -> bytes:
        if service == "floor":
            return json.dumps({"features": FLOOR_FEATURES}).encode()
        return json.dumps({**_request(settings), "request_id": f"h{stamp}-{i}"}).encode()

    async def run() -> dict[str, float]:
        inbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
        outbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        lifespan = asyncio.ensure_future(app(scope, inbox.get, outbox.put))
        await inbox.put({"type": "lifespan.startup"})
        started = await outbox.get()
        if started["type"] != "lifespan.startup.complete":
            raise SystemExit(f"the {service} service did not start: {started}")
        for i in range(WARMUP):
            await _call(app, body(i))
        walls = []
        cpu = time.process_time()
        for i in range(WARMUP, WARMUP + requests):
            began = time.perf_counter()
            await _call(app, body(i))
            walls.append(time.perf_counter() - began)
        cpu = time.process_time() - cpu
        await inbox.put({"type": "lifespan.shutdown"})
        await outbox.get()
        lifespan.cancel()
        return {
            "cpu_us": round(cpu / requests * 1e6, 1),
            "wall_p50_us": round(statistics.median(walls) * 1e6, 1),
        }

    import uvloop  # what uvicorn runs under bentoml serve

    figures = uvloop.run(run())
    sys.stdout.write(json.dumps(figures) + "\n")
    sys.stdout.flush()
    os._exit(0)  # the service's threads (follower, log) are not joined: figures are printed


def _answer_at_once() -> None:
    """``Predictor.predict`` of the service answers a fixed prediction, with fixed stage timings
    observed in the metrics as the real one observes them."""
    from prodguard import wiring
    from prodguard.serving.engine import Prediction

    build = wiring.build_serving

    def built(*args: object, **kwargs: object) -> object:
        serving = build(*args, **kwargs)  # type: ignore[arg-type]
        metrics = kwargs["metrics"]
        stages = {"checks": 0.0011, "features": 0.0004, "model": 0.0007, "log": 0.0004}
        stages["total"] = sum(stages.values())

        def predict(rows, ids, timings=None):  # type: ignore[no-untyped-def]
            for stage, seconds in stages.items():
                metrics.observe(stage, seconds)  # type: ignore[attr-defined]
            metrics.count("predictions", {"version": "1", "role": "champion"})  # type: ignore[attr-defined]
            if timings is not None:
                timings.update(stages)
            return [Prediction(ids[0] or "x", 0.25, False, "bench", 1)]

        serving.predictor.predict = predict  # type: ignore[attr-defined]
        return serving

    wiring.build_serving = built  # type: ignore[assignment]


_REQUEST: dict[str, object] = {}


def _request(settings: object) -> dict[str, object]:
    """One body of the benchmark's requests (``prodguard.bench.workload``), read once."""
    if not _REQUEST:
        from prodguard import wiring
        from prodguard.bench.workload import guarded_bodies

        at = wiring.feature_store(settings).materialized_until()  # type: ignore[arg-type]
        assert at is not None, "the online store was never materialized"
        (first,) = guarded_bodies(settings, at, 1, {}, "h")  # type: ignore[arg-type]
        _REQUEST.update({k: v for k, v in first.items() if k != "request_id"})
    return _REQUEST


async def _call(app: object, body: bytes) -> None:
    import asyncio

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/predict",
        "raw_path": b"/predict",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 3000),
        "state": {},
    }
    given = False
    statuses: list[int] = []

    async def receive() -> dict[str, object]:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)  # no disconnect while the answer is written
        return {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(int(message["status"]))  # type: ignore[call-overload]

    await app(scope, receive, send)  # type: ignore[operator]
    if statuses != [200]:
        raise SystemExit(f"/predict answered {statuses}: check the project (a champion?)")


if __name__ == "__main__":
    raise SystemExit(main())
