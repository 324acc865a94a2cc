"""What the core needs of a feature store (``FeastStore`` is the implementation; a replay's
``AsOfFeatures`` serves the request path from the offline data)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

import pandas as pd

from prodguard.features.feast_adapter import MaterializeResult, ViewVersion


class FeatureVersions(Protocol):
    def versions(self) -> list[ViewVersion]: ...


class FeatureStore(FeatureVersions, Protocol):
    """The request path needs only ``online_records`` (``serving.engine.OnlineFeatures``)."""

    def online_records(self, entity_rows: list[dict[str, Any]]) -> list[dict[str, Any]]: ...

    def online_features(self, entity_rows: list[dict[str, Any]]) -> pd.DataFrame: ...

    def historical_features(self, entity_df: pd.DataFrame) -> pd.DataFrame: ...

    def materialize(self, until: datetime, start: datetime | None = None) -> MaterializeResult: ...

    def materialized_until(self) -> datetime | None: ...

    def push(self, view_name: str, rows: pd.DataFrame) -> None: ...
