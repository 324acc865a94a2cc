"""The files of a new project, drafted from the profiles of its data files (pure text)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from prodguard.config import KpiSettings, MonitoringSettings, RolloutSettings
from prodguard.rollout.traffic_fit import fitted
from prodguard.scaffold.profile import ColumnProfile

TIMESTAMP = "event_timestamp"  # every source's time column, as prodguard and Feast expect it
FEAST_TYPES = {"integer": "Int64", "float": "Float64", "categorical": "String", "boolean": "Bool"}
TASK_KPI: dict[str, dict[str, Any]] = {  # a KPI per task, computed from /feedback
    "binary": {"name": "error_cost", "cost_missed": 1.0, "cost_false_alert": 0.25},
    "multiclass": {"name": "error_rate"},
    "regression": {"name": "abs_error"},
}


@dataclass(frozen=True)
class Source:
    """One data file: its source name, file, columns (time column renamed) and the TTL of its
    feature view (how long a row stays the entity's current value)."""

    name: str
    path: Path
    timestamp: str  # the column's name in the file
    columns: list[ColumnProfile]
    ttl: timedelta
    rows: int


@dataclass(frozen=True)
class Plan:
    name: str  # project name; the registered model is "<name>-model"
    package: str  # the Python package written for the project
    task: str
    entity: str
    label: str
    sources: list[Source]  # the first holds the labelled rows
    per_day: float | None = None  # the labelled rows' rate: the requests a day to size for

    @property
    def model_source(self) -> Source:
        return self.sources[0]

    def store_columns(self, source: Source) -> list[ColumnProfile]:
        skip = {self.entity, TIMESTAMP, self.label}
        return [c for c in source.columns if c.name not in skip and c.kind != "timestamp"]


def entity_ttl(frame: pd.DataFrame, entity: str, timestamp: str) -> timedelta:
    """Three times the median gap between an entity's rows (at least a day): a row stays the
    entity's features that long, and `materialize` loads that far back."""
    stamps = frame[[entity, timestamp]].dropna().sort_values([entity, timestamp])
    gaps = stamps.groupby(entity)[timestamp].diff().dropna()
    gaps = gaps[gaps > pd.Timedelta(0)]
    median = gaps.median() if len(gaps) else pd.Timedelta(days=1)
    return max(timedelta(days=1), (3 * median).to_pytimedelta())


def suite(source: Source, plan: Plan) -> dict[str, Any]:
    """A draft expectation suite: the columns, their null rates, ranges with margins and
    category sets as observed (edit it: it is the data contract of every future batch)."""
    names = [c.name if c.name != source.timestamp else TIMESTAMP for c in source.columns]
    expectations: list[dict[str, Any]] = [
        _expect("expect_table_columns_to_match_set", column_set=names, exact_match=True),
        _expect("expect_table_row_count_to_be_between", min_value=1, max_value=source.rows * 10),
    ]
    for column in source.columns:
        name = TIMESTAMP if column.name == source.timestamp else column.name
        if column.null_rate == 0 and name != plan.label:
            expectations.append(_expect("expect_column_values_to_not_be_null", column=name))
        elif column.null_rate < 1 and name != plan.label:
            mostly = round(max(0.0, 1 - column.null_rate - 0.05), 3)
            if mostly > 0:
                expectations.append(
                    _expect("expect_column_values_to_not_be_null", column=name, mostly=mostly)
                )
        bounds = column.margin_range()
        if column.numeric and bounds is not None:
            expectations.append(
                _expect(
                    "expect_column_values_to_be_between",
                    column=name,
                    min_value=bounds[0],
                    max_value=bounds[1],
                )
            )
        if column.kind == "categorical" and column.categories is not None and name != plan.entity:
            expectations.append(
                _expect(
                    "expect_column_values_to_be_in_set",
                    column=name,
                    value_set=list(column.categories),
                )
            )
    return {
        "name": source.name,
        "meta": {
            "notes": f"Drafted by `prodguard init` from {source.path.name} ({source.rows} rows): "
            "ranges are the observed ones widened by 10 %, value sets the observed ones. Edit."
        },
        "expectations": expectations,
    }


def _expect(kind: str, **kwargs: Any) -> dict[str, Any]:
    return {"type": kind, "kwargs": kwargs}


def definitions(plan: Plan) -> str:
    entity = next(c for c in plan.model_source.columns if c.name == plan.entity)
    value_type = "INT64" if entity.kind == "integer" else "STRING"
    used = sorted(
        {FEAST_TYPES[c.kind] for s in plan.sources for c in plan.store_columns(s)} | {"Float64"}
    )
    lines = [
        '"""Feast definitions drafted by `prodguard init`: one entity, one feature view per',
        "source (its columns besides the entity, time and label), the feature service (the",
        "model's input contract from the store). File paths are relative to the offline store",
        "folder `prodguard ingest` writes. A view's TTL is how long a row stays the entity's",
        'current value, and how far back `prodguard materialize` loads."""',
        "",
        "from datetime import timedelta",
        "",
        "from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType",
        f"from feast.types import {', '.join(used)}",
        "",
        f"{plan.entity}_entity = Entity(",
        f'    name="{plan.entity}", join_keys=["{plan.entity}"], value_type=ValueType.{value_type}',
        ")",
    ]
    views = []
    for source in plan.sources:
        view = f"{source.name}_view"
        views.append(view)
        fields = "\n".join(
            f'        Field(name="{c.name}", dtype={FEAST_TYPES[c.kind]}),'
            for c in plan.store_columns(source)
        )
        lines += [
            "",
            f"{view} = FeatureView(",
            f'    name="{source.name}",',
            f"    entities=[{plan.entity}_entity],",
            f"    ttl=timedelta(seconds={int(source.ttl.total_seconds())}),",
            "    schema=[",
            fields,
            "    ],",
            "    source=FileSource(",
            f'        name="{source.name}", path="{source.name}.parquet", '
            f'timestamp_field="{TIMESTAMP}"',
            "    ),",
            "    online=True,",
            ")",
        ]
    lines += [
        "",
        f"{plan.name}_features = FeatureService(",
        f'    name="{plan.name}_features", features=[{", ".join(views)}]',
        ")",
        "",
    ]
    return "\n".join(lines)


FEATURE_STORE_YAML = """\
# prodguard fills ${{PRODGUARD_DATA_DIR}} with paths.data_dir.
project: {name}
provider: local
registry:
  registry_type: file
  path: ${{PRODGUARD_DATA_DIR}}/feast/registry.db
  cache_ttl_seconds: 60
online_store:
  type: sqlite
  path: ${{PRODGUARD_DATA_DIR}}/feast/online_store.db
offline_store:
  type: duckdb
entity_key_serialization_version: 3
"""

REGISTRY_YAML = """\
# MLflow on a SQLite store and local artifacts under the data folder.
tracking_uri: sqlite:///${PRODGUARD_DATA_DIR}/mlflow/mlflow.db
registry_uri: sqlite:///${PRODGUARD_DATA_DIR}/mlflow/mlflow.db
artifact_location: ${PRODGUARD_DATA_DIR}/mlflow/artifacts
experiment: prodguard
audit_uri: sqlite:///${PRODGUARD_DATA_DIR}/mlflow/audit.db
"""


def loader(plan: Plan) -> str:
    files = {s.name: (str(s.path), s.timestamp) for s in plan.sources}
    return f'''"""The project's SourceLoader (drafted by `prodguard init`): each source is a data
file; its time column becomes ``event_timestamp`` (UTC). Replace it to read your warehouse."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd

from prodguard.errors import DataSourceError

FILES = {json.dumps(files, indent=4)}  # source -> (file, its time column)


class Loader:
    def __init__(self) -> None:
        self._tables: dict[str, pd.DataFrame] = {{}}

    def table(self, source: str) -> pd.DataFrame:
        if source not in FILES:
            raise DataSourceError(f"no source '{{source}}'; the project has {{sorted(FILES)}}")
        if source not in self._tables:
            path, column = FILES[source]
            try:
                frame = pd.read_csv(path) if path.endswith(".csv") else pd.read_parquet(path)
            except (OSError, ValueError) as exc:
                raise DataSourceError(f"cannot read {{Path(path).name}}: {{exc}}") from None
            stamps = pd.to_datetime(frame.pop(column), utc=True)
            frame.insert(0, "event_timestamp", stamps)
            self._tables[source] = frame
        return self._tables[source]

    def load(self, source: str, start: datetime, end: datetime) -> pd.DataFrame:
        frame = self.table(source)
        stamps = frame["event_timestamp"]
        return frame[(stamps >= start) & (stamps < end)].reset_index(drop=True)
'''


def features(plan: Plan) -> str:
    entity = next(c for c in plan.model_source.columns if c.name == plan.entity)
    entity_type = "int" if entity.kind == "integer" else "str"
    return f'''"""What a caller sends (drafted by `prodguard init`) and the features it gives.

A request names the entity and the time it asks about; the feature store adds the entity's
features as of then. ``request_features`` derives features from the request itself.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

REQUEST_FEATURES = ["at_hour", "at_day_of_week", "at_month"]


def request_features(frame: pd.DataFrame) -> pd.DataFrame:
    """Model features computed from request fields (``event_timestamp`` = the request's time)."""
    stamps = pd.DatetimeIndex(pd.to_datetime(frame["event_timestamp"], utc=True))
    return pd.DataFrame(
        {{
            "at_hour": stamps.hour.to_numpy(dtype="float64"),
            "at_day_of_week": stamps.dayofweek.to_numpy(dtype="float64"),
            "at_month": stamps.month.to_numpy(dtype="float64"),
        }},
        index=frame.index,
    )


# Optional: the same features on columns (dict column -> list of values, one per row), which the
# serving path then calls instead of the frame form, without pandas (a one-row frame costs far
# more than the work). Set ``model.request_features_columns:
# {plan.package}.features:request_features_columns`` in prodguard.yaml; prodguard checks on the
# source's rows that both forms give the same values and refuses to serve or train if not.
#
# def request_features_columns(columns: dict[str, list[Any]]) -> dict[str, list[Any]]:
#     stamps = [pd.Timestamp(value) for value in columns["event_timestamp"]]
#     stamps = [s if s.tzinfo is not None else s.tz_localize("UTC") for s in stamps]
#     utc = [s.tz_convert("UTC") for s in stamps]
#     return {{
#         "at_hour": [float(s.hour) for s in utc],
#         "at_day_of_week": [float(s.dayofweek) for s in utc],
#         "at_month": [float(s.month) for s in utc],
#     }}


class Request(BaseModel):
    """One prediction request."""

    model_config = ConfigDict(extra="forbid")

    {plan.entity}: {entity_type}
    event_timestamp: AwareDatetime
    request_id: str | None = Field(
        default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$"
    )

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Request:
        """The request a caller would have sent for a row of the labelled source (replays)."""
        return cls(
            {plan.entity}=row["{plan.entity}"],
            event_timestamp=pd.Timestamp(row["event_timestamp"]).to_pydatetime(),
        )

    def to_row(self) -> dict[str, Any]:
        """The request as a row of the labelled source."""
        return {{
            "{plan.entity}": self.{plan.entity},
            "event_timestamp": pd.Timestamp(self.event_timestamp).tz_convert("UTC"),
        }}
'''


def settings_yaml(plan: Plan) -> str:
    """prodguard.yaml's text: ``settings`` under a comment that says which rate its sizes are
    for."""
    sizes = fitted_sizes(plan.per_day)
    header = "# Drafted by `prodguard init`; see docs/guard-your-own-model.md\n"
    if plan.per_day is not None:
        verb = "fitted to" if sizes else "(the defaults) fill at"
        header += (
            f"# Sizes of the guard and the monitors {verb} ~{plan.per_day:.3g} requests a day "
            f"(the\n# rate of {plan.model_source.path.name}'s rows); `prodguard status` says "
            "when they miss your traffic\n"
        )
    return header + yaml.safe_dump(settings(plan, sizes), sort_keys=False)


def settings(plan: Plan, sizes: dict[str, int] | None = None) -> dict[str, Any]:
    """prodguard.yaml, with the guard's and monitors' sizes fitted to ``plan.per_day`` where the
    defaults (made for thousands of requests a day) would leave their checks inconclusive
    (``sizes``: those already fitted)."""
    if sizes is None:
        sizes = fitted_sizes(plan.per_day)
    min_labelled = min(50, sizes.get("monitoring.window.min_rows", 50))
    kpi: dict[str, Any] = {
        **TASK_KPI[plan.task],
        "outcome": plan.label,
        "min_labelled": min_labelled,
    }
    drafted: dict[str, Any] = {
        "project": {"name": plan.name, "loader": f"{plan.package}.loader:Loader"},
        "paths": {"data_dir": ".prodguard", "feature_repo": "feature_repo"},
        "feature_store": {
            "config": "feature_repo/feature_store.yaml",
            "feature_service": f"{plan.name}_features",
        },
        "ingest": {"batch": "month"},
        "sources": {
            s.name: {"suite": f"{s.name}.json", "keys": [plan.entity, TIMESTAMP]}
            for s in plan.sources
        },
        "model": {
            "name": f"{plan.name}-model",
            "task": plan.task,
            "source": plan.model_source.name,
            "label": plan.label,
            "entity_keys": [plan.entity],
            "request_features": f"{plan.package}.features:request_features",
        },
        "registry": {"config": "mlruns_config/local.yaml"},
        "serving": {"request_model": f"{plan.package}.features:Request"},
        "monitoring": {"kpi": kpi},
    }
    for dotted, value in sizes.items():
        section = drafted
        *path, key = dotted.split(".")
        for part in path:
            section = section.setdefault(part, {})
        section[key] = value
    return drafted


def fitted_sizes(per_day: float | None) -> dict[str, int]:
    """The sizes (dotted settings) that differ from the defaults at ``per_day`` requests."""
    if per_day is None:
        return {}
    monitoring = MonitoringSettings(kpi=KpiSettings(name="kpi", outcome="outcome"))
    return fitted(per_day, RolloutSettings(), monitoring)
