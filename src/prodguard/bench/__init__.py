"""End-to-end latency benchmark: the guarded service against a bare model endpoint."""

import os

# Worker processes of the bare and floor endpoints (BentoML reads them at import): `prodguard
# bench` gives each of its three services the same number.
WORKERS_ENV = "PRODGUARD_BENCH_WORKERS"


def bench_workers() -> int:
    return int(os.environ.get(WORKERS_ENV, "1"))
