"""Training frames: labelled rows of a window joined point-in-time with the feature service."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import pandas as pd

from prodguard.config import ModelSettings, Settings
from prodguard.errors import ConfigError, NoDataError, TrainingError
from prodguard.features.request_columns import SAMPLE_ROWS, RequestColumns, check_request_columns
from prodguard.ingestion.offline import OfflineStore
from prodguard.project import import_object
from prodguard.training.settings_checks import check_entity_keys, check_label, check_source_keys

RequestFeatures = Callable[[pd.DataFrame], pd.DataFrame]
ROW_ID = "__prodguard_row"
_log = logging.getLogger(__name__)
# (request_features, request_features_columns, source file) -> the file's (mtime, size) when
# the two forms were last found equal on it: a process builds predictors often (replays)
_CHECKED: dict[tuple[str, str, str], tuple[int, int]] = {}


class HistoricalFeatures(Protocol):
    def historical_features(self, entity_df: pd.DataFrame) -> pd.DataFrame: ...

    def feature_refs(self) -> list[str]: ...


@dataclass(frozen=True)
class TrainingFrame:
    features: pd.DataFrame
    label: pd.Series
    entities: pd.DataFrame
    start: datetime
    end: datetime
    unlabelled: int

    def __len__(self) -> int:
        return len(self.features)


def load_request_features(model: ModelSettings) -> RequestFeatures:
    return import_object(model.request_features, "model.request_features")


def load_request_columns(settings: Settings) -> RequestColumns | None:
    """The columns form of the request features (``model.request_features_columns``) for the
    serving path, once checked against ``model.request_features`` on the ingested rows of the
    model's source; None when it is not set, or (logged) when there are no rows to check it on
    yet, so the frame form serves. ConfigError when the two forms differ."""
    model = _model(settings)
    if model.request_features_columns is None:
        return None
    columns_form = import_object(model.request_features_columns, "model.request_features_columns")
    offline = OfflineStore(settings.paths.offline_dir)
    path = offline.path(model.source)
    stat = path.stat() if path.exists() else None
    checked = (model.request_features, model.request_features_columns, str(path))
    if stat is not None and _CHECKED.get(checked) == (stat.st_mtime_ns, stat.st_size):
        return columns_form  # these rows were checked already
    rows = offline.sample(model.source, SAMPLE_ROWS)  # not the whole source: a serve start
    if rows is None or rows.empty:
        _log.warning(
            "model.request_features_columns is not used: no ingested '%s' rows to check it "
            "against model.request_features; the frame form serves",
            model.source,
        )
        return None
    timestamp = settings.sources[model.source].timestamp
    check_request_columns(
        load_request_features(model),
        columns_form,
        rows.rename(columns={timestamp: "event_timestamp"}),
    )
    if stat is not None:
        _CHECKED[checked] = (stat.st_mtime_ns, stat.st_size)
    return columns_form


def store_feature_names(store: HistoricalFeatures) -> list[str]:
    names = [ref.split(":", 1)[1] for ref in store.feature_refs()]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise TrainingError(f"feature service has duplicate feature names {duplicated}")
    return names


def build_frame(
    settings: Settings,
    store: HistoricalFeatures,
    start: datetime,
    end: datetime,
    request_features: RequestFeatures | None = None,
) -> TrainingFrame:
    """Labelled rows of ``model.source`` in ``[start, end)`` with their features as of each row."""
    model = _model(settings)
    timestamp = settings.sources[model.source].timestamp
    rows = OfflineStore(settings.paths.offline_dir).read(model.source)
    if rows is None:
        raise TrainingError(
            f"no ingested '{model.source}' rows; run `prodguard ingest` for the window first"
        )
    versions = getattr(store, "versions", None)  # the feature service's views, when known
    join_keys = [k for v in versions() for k in v.join_keys] if versions else []
    check_model_data(settings, list(rows.columns), join_keys)
    window = rows[(rows[timestamp] >= start) & (rows[timestamp] < end)]
    if window.empty:
        raise NoDataError(
            f"no '{model.source}' rows in [{start:%Y-%m-%d}, {end:%Y-%m-%d}); ingest that window "
            "or choose another"
        )
    labelled = window[window[model.label].notna()].reset_index(drop=True)
    if labelled.empty:
        raise TrainingError(
            f"the {len(window)} '{model.source}' rows in [{start:%Y-%m-%d}, {end:%Y-%m-%d}) "
            f"have no '{model.label}' label yet; choose a window whose outcomes are known"
        )
    entities = labelled[[*model.entity_keys, timestamp]].rename(
        columns={timestamp: "event_timestamp"}
    )
    entities[ROW_ID] = range(len(entities))
    joined = store.historical_features(entities)
    if sorted(joined[ROW_ID].tolist()) != list(range(len(entities))):
        raise TrainingError(
            "the point-in-time join returned duplicated or missing entity rows; "
            "check the feature views' entity keys"
        )
    joined = joined.sort_values(ROW_ID).reset_index(drop=True)
    derive = request_features or load_request_features(model)
    source_rows = labelled.rename(columns={timestamp: "event_timestamp"})
    if request_features is None and model.request_features_columns is not None:
        columns_form = import_object(
            model.request_features_columns, "model.request_features_columns"
        )
        check_request_columns(derive, columns_form, source_rows)
    request = derive(source_rows)
    store_features = joined[store_feature_names(store)]
    overlap = sorted(set(request.columns) & set(store_features.columns))
    if overlap:
        raise TrainingError(f"request and store features share names {overlap}; rename one")
    features = pd.concat(
        [request.reset_index(drop=True), store_features.reset_index(drop=True)], axis=1
    )
    for column in features.columns:  # one numeric type: integers with gaps arrive as floats
        if not is_categorical(features[column]):
            features[column] = features[column].astype("float64")
    return TrainingFrame(
        features=features,
        label=_label(labelled[model.label], model),
        entities=entities.drop(columns=[ROW_ID]),
        start=start,
        end=end,
        unlabelled=len(window) - len(labelled),
    )


def _label(values: pd.Series, model: ModelSettings) -> pd.Series:
    """Regression: floats. Classifiers: the class labels as they are, integers when every one is
    a whole number (a nullable column arrives as floats)."""
    if model.task == "regression":
        numbers = pd.to_numeric(values, errors="coerce")
        if numbers.isna().any():
            raise TrainingError(
                f"model.task is regression but label '{model.label}' has non-numeric values; "
                "fix the source or the task"
            )
        return numbers.astype("float64")
    if pd.api.types.is_bool_dtype(values):
        return values.astype("int64")
    if pd.api.types.is_numeric_dtype(values) and (values == values.round()).all():
        return values.astype("int64")
    return values.reset_index(drop=True)


class JoinKeyed(Protocol):
    """A feature view, as far as the check needs it."""

    @property
    def join_keys(self) -> Sequence[str]: ...


def check_model_source(settings: Settings, views: Iterable[JoinKeyed]) -> None:
    """``check_model_data`` on the model source's ingested columns (read from the offline
    store's schema, not its rows) and the feature service's views: where the settings meet the
    data before a replay (baseline, drill) or a service starts."""
    model = _model(settings)
    columns = OfflineStore(settings.paths.offline_dir).columns(model.source)
    check_model_data(settings, columns, [k for v in views for k in v.join_keys])


def check_model_data(
    settings: Settings, columns: Sequence[str] | None, join_keys: Iterable[str] = ()
) -> None:
    """The model settings against the data, the same check for train, adopt, baseline, drill
    and serve: ``model.label``, ``model.entity_keys`` and ``sources.<model.source>.keys`` are
    columns of the model's source (``columns``; None when nothing is ingested yet: then only
    the next check) and the entity keys hold the feature service's ``join_keys``. A mistake
    is one ConfigError naming the setting, the missing names and what is there."""
    model = _model(settings)
    if columns is None:  # no columns to check: only the join keys, against the entity keys
        check_entity_keys(model, list(model.entity_keys), join_keys)
        return
    check_label(model, columns)
    check_entity_keys(model, columns, join_keys)
    check_source_keys(model, settings.sources[model.source], columns)


def _model(settings: Settings) -> ModelSettings:
    if settings.model is None:
        raise ConfigError("prodguard.yaml has no 'model' section; add one (see README)")
    return settings.model


def describe_columns(frame: pd.DataFrame) -> list[list[Any]]:
    """The model's input contract: ordered [name, kind] pairs (kind: numeric | categorical)."""
    return [[c, "categorical" if is_categorical(frame[c]) else "numeric"] for c in frame.columns]


def is_categorical(column: pd.Series) -> bool:
    return not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column)
