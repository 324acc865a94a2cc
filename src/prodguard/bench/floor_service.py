"""The framework floor: a BentoML endpoint with the guarded service's settings (threads,
timeout) that accepts the bare endpoint's body and returns a constant. What no model service
on this framework can beat; ``prodguard bench`` reports guarded / floor beside guarded / bare.
"""

from __future__ import annotations

from typing import Annotated

import bentoml
from pydantic import BaseModel, Field

from prodguard.bench import bench_workers
from prodguard.telemetry import disable_telemetry

disable_telemetry()

Scalar = float | int | str | bool | None


class FloorOut(BaseModel):
    probability: float
    version: int


@bentoml.service(
    name="prodguard-floor", traffic={"timeout": 30}, threads=8, workers=bench_workers()
)
class FloorService:
    @bentoml.api(route="/predict")
    def predict(
        self,
        features: Annotated[dict[str, Scalar], Field(min_length=1, max_length=1000)],
        ctx: bentoml.Context,
    ) -> FloorOut:
        """Answer a constant (the request is parsed and validated like the bare one's)."""
        ctx.response.headers["Server-Timing"] = "total;dur=0.000"
        return FloorOut(probability=0.0, version=0)
