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
