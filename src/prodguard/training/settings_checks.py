"""The model settings checked against what the project's data holds: a wrong ``model.label`` or
``model.entity_keys`` is one line naming the setting and what was found, before anything runs."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from prodguard.config import ModelSettings, SourceSettings
from prodguard.errors import ConfigError

SHOWN = 12  # columns named in a message


def check_label(model: ModelSettings, columns: Sequence[str]) -> None:
    if model.label not in columns:
        raise ConfigError(
            f"model.label '{model.label}' is not a column of source '{model.source}' "
            f"(its columns: {_some(columns)}); set it to the column holding the outcome"
        )


def check_entity_keys(
    model: ModelSettings, columns: Sequence[str], join_keys: Iterable[str] = ()
) -> None:
    """The entity keys are columns of the model's source and include every join key of the
    feature service's views (``join_keys``)."""
    absent = [k for k in model.entity_keys if k not in columns]
    if absent:
        raise ConfigError(
            f"model.entity_keys {absent} are not columns of source '{model.source}' "
            f"(its columns: {_some(columns)}); list the columns that identify the entities"
        )
    needed = sorted(set(join_keys) - set(model.entity_keys))
    if needed:
        raise ConfigError(
            f"model.entity_keys {list(model.entity_keys)} lack the feature service's join keys "
            f"{needed}; add them (the feature views' entities join on them)"
        )


def check_source_keys(model: ModelSettings, source: SourceSettings, columns: Sequence[str]) -> None:
    """The source's row keys (its time columns aside) are columns of the model's source."""
    times = ("event_timestamp", source.timestamp)
    absent = [k for k in source.keys if k not in times and k not in columns]
    if absent:
        raise ConfigError(
            f"sources.{model.source}.keys {absent} are not columns of source '{model.source}' "
            f"(its columns: {_some(columns)}); list the columns that identify a row"
        )


def _some(columns: Sequence[str]) -> str:
    shown = ", ".join(map(str, list(columns)[:SHOWN]))
    return shown + (f", ... ({len(columns)} in all)" if len(columns) > SHOWN else "")
