"""Feast definitions of the Chicago project: one entity (the city), three daily feature views,
and the feature service ``ridership_features`` (the model's input contract).

Rows are stamped at each day's local midnight; a TTL of two days lets a request for a day whose
row is late use the day before, and bounds what `prodguard materialize` loads.
"""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Float64, Int64
from prodguard_chicago.loader import GAMES, LAGGED_STATIONS, WEATHER

TTL = timedelta(days=2)

city = Entity(name="city", join_keys=["city"], value_type=ValueType.STRING)


def _view(name: str, source: str, fields: list[Field], description: str) -> FeatureView:
    return FeatureView(
        name=name,
        entities=[city],
        ttl=TTL,
        schema=fields,
        source=FileSource(name=source, path=f"{source}.parquet", timestamp_field="event_timestamp"),
        online=True,
        description=description,
        tags={"owner": "chicago", "source": source},
    )


weather_daily = _view(
    "weather_daily",
    "weather",
    [Field(name=c, dtype=Float64) for c in WEATHER],
    "The day's weather at O'Hare: °F, %, inches of mercury, mph, inches.",
)
network_lag14 = _view(
    "network_lag14",
    "network",
    [Field(name=f"{s.lower()}_lag14", dtype=Float64) for s in LAGGED_STATIONS],
    "Entries (thousands) at 20 stations 14 days before the day.",
)
games_daily = _view(
    "games_daily",
    "games",
    [Field(name=c.lower(), dtype=Int64) for c in GAMES],
    "1 if the team plays at home / away that day.",
)

ridership_features = FeatureService(
    name="ridership_features",
    features=[weather_daily, network_lag14, games_daily],
    description="Input contract of the Clark/Lake ridership model.",
)
