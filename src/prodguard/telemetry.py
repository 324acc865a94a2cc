"""Keeps the telemetry of every wired tool off (no network here, and users expect it)."""

from __future__ import annotations

import os

_OFF = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "BENTOML_DO_NOT_TRACK": "true",
    "DO_NOT_TRACK": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "FEAST_USAGE": "False",
    "TQDM_DISABLE": "1",
}


def disable_telemetry() -> None:
    """Set the opt-out variables of every tool, unless the user set them explicitly.

    Call before the first import of a tool's SDK (adapters import their SDK lazily).
    """
    for key, value in _OFF.items():
        os.environ.setdefault(key, value)
