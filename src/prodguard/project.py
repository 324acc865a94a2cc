"""The seam between the generic core and a team's own project.

A project supplies a ``SourceLoader``: given a source name and a time window, it returns that
window's raw rows as a DataFrame. prodguard does everything else (contracts, quarantine, the
feature store). The loader class is named in ``prodguard.yaml`` under ``project.loader``.
"""

from __future__ import annotations

import importlib
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

import pandas as pd

from prodguard.config import Settings
from prodguard.errors import ConfigError


@runtime_checkable
class SourceLoader(Protocol):
    def load(self, source: str, start: datetime, end: datetime) -> pd.DataFrame:
        """Rows of ``source`` whose timestamp is in ``[start, end)`` (all rows for a static source).

        Raises ``DataSourceError`` when the raw data cannot be read.
        """
        ...


def import_object(dotted: str, setting: str) -> Any:
    """The object named 'package.module:name' by a setting; ConfigError naming the setting."""
    module_name, _, name = dotted.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"{setting}: cannot import module '{module_name}' ({exc.name} missing); "
            "install the project package or fix the setting"
        ) from None
    found = getattr(module, name, None)
    if found is None:
        raise ConfigError(f"{setting}: '{module_name}' has no '{name}'")
    return found


def load_loader(settings: Settings) -> SourceLoader:
    cls = import_object(settings.project.loader, "project.loader")
    class_name = settings.project.loader.partition(":")[2]
    loader = cls()
    if not isinstance(loader, SourceLoader):
        raise ConfigError(f"project.loader: {class_name} has no load(source, start, end) method")
    return loader


def load_request_model(settings: Settings) -> Any:
    """The class named by ``serving.request_model``: a pydantic model of one request with
    ``from_row(row) -> request`` (a source row as the request a caller would have sent) and
    ``to_row() -> dict`` (the request as a source row); ConfigError naming what it lacks."""
    if settings.serving is None:
        raise ConfigError("prodguard.yaml has no 'serving' section; add serving.request_model")
    dotted = settings.serving.request_model
    found = import_object(dotted, "serving.request_model")
    lacks = [
        name
        for name in ("model_validate", "model_json_schema", "from_row", "to_row")
        if not callable(getattr(found, name, None))
    ]
    if not isinstance(found, type) or lacks:
        what = (
            f"a {type(found).__name__}"
            if not isinstance(found, type)
            else f"a class lacking {lacks}"
        )
        raise ConfigError(
            f"serving.request_model '{dotted}' is {what}; it must name a pydantic model class "
            "with from_row(row) and to_row() (see docs/guard-your-own-model.md)"
        )
    return found
