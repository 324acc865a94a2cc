"""The bare baseline: a BentoML endpoint that scores features supplied in the request with the
champion — the same loaded model and the same ``LoadedModel.predict_columns`` as the guarded
service, and nothing else: no request checks, no feature store, no prediction log, no
monitoring, no hot swap. ``prodguard bench`` runs it with ``bentoml serve`` next to the guarded
service, with the same BentoML settings (threads, timeout), to price the guard.

The settings (``PRODGUARD_CONFIG``) are read when the service starts, not at import.
"""

from __future__ import annotations

import time
from typing import Annotated

import bentoml
from pydantic import BaseModel, Field

from prodguard import wiring
from prodguard.bench import bench_workers
from prodguard.config import load_settings
from prodguard.errors import ServiceNotReady
from prodguard.registry.lineage import recorded_store_features
from prodguard.serving.fast_path import load_verified
from prodguard.telemetry import disable_telemetry

disable_telemetry()

Scalar = float | int | str | bool | None


class BareOut(BaseModel):
    probability: float
    version: int


@bentoml.service(name="prodguard-bare", traffic={"timeout": 30}, threads=8, workers=bench_workers())
class BareService:
    def __init__(self) -> None:
        registry = wiring.registry_operations(load_settings()).registry
        version = registry.aliases().get("champion")
        if version is None:
            raise ServiceNotReady("no champion to serve")
        contract = recorded_store_features(registry.version(version).tags) or ()
        self.model = load_verified(registry, contract, version)

    @bentoml.api(route="/predict")
    def predict(
        self,
        features: Annotated[dict[str, Scalar], Field(min_length=1, max_length=1000)],
        ctx: bentoml.Context,
    ) -> BareOut:
        """Score one row of model features."""
        began = time.perf_counter()
        columns = {name: [value] for name, value in features.items()}
        probability = float(self.model.predict_columns(columns, 1).score[0])
        seconds = time.perf_counter() - began
        ctx.response.headers["Server-Timing"] = (
            f"model;dur={seconds * 1000:.3f}, total;dur={seconds * 1000:.3f}"
        )
        return BareOut(probability=probability, version=self.model.version)
