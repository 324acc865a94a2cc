"""Feast definitions of the flights example: entities, sources, feature views, feature service.

File source paths are relative to the offline store folder that `prodguard ingest` writes.
The FeatureService ``flight_delay_features`` is the model's input contract.
Change a view's schema and `prodguard materialize` re-applies it: Feast records a new version.
"""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Float64, Int64, String

airport = Entity(
    name="airport",
    join_keys=["origin"],
    value_type=ValueType.STRING,
    description="Origin airport (EWR, JFK, LGA)",
)
plane = Entity(
    name="plane",
    join_keys=["tailnum"],
    value_type=ValueType.STRING,
    description="Aircraft tail number",
)
carrier = Entity(
    name="carrier",
    join_keys=["carrier"],
    value_type=ValueType.STRING,
    description="Two-character airline code",
)

weather_source = FileSource(
    name="weather", path="weather.parquet", timestamp_field="event_timestamp"
)
planes_source = FileSource(name="planes", path="planes.parquet", timestamp_field="event_timestamp")
carrier_stats_source = FileSource(
    name="carrier_stats", path="carrier_stats.parquet", timestamp_field="event_timestamp"
)

weather_hourly = FeatureView(
    name="weather_hourly",
    entities=[airport],
    ttl=timedelta(hours=3),
    schema=[
        Field(name="temp", dtype=Float64, description="Temperature, °F"),
        Field(name="dewp", dtype=Float64, description="Dew point, °F"),
        Field(name="humid", dtype=Float64, description="Relative humidity, %"),
        Field(name="wind_dir", dtype=Float64, description="Wind direction, degrees"),
        Field(name="wind_speed", dtype=Float64, description="Wind speed, mph"),
        Field(name="wind_gust", dtype=Float64, description="Wind gust, mph"),
        Field(name="precip", dtype=Float64, description="Precipitation, inches"),
        Field(name="pressure", dtype=Float64, description="Sea-level pressure, millibars"),
        Field(name="visib", dtype=Float64, description="Visibility, miles"),
    ],
    source=weather_source,
    online=True,
    tags={"owner": "flights", "source": "weather"},
)

plane_specs = FeatureView(
    name="plane_specs",
    entities=[plane],
    ttl=timedelta(days=3650),
    schema=[
        Field(name="plane_year", dtype=Float64, description="Year of manufacture"),
        Field(name="plane_type", dtype=String),
        Field(name="manufacturer", dtype=String),
        Field(name="engines", dtype=Int64),
        Field(name="seats", dtype=Int64),
        Field(name="engine", dtype=String),
    ],
    source=planes_source,
    online=True,
    tags={"owner": "flights", "source": "planes"},
)

carrier_ontime_daily = FeatureView(
    name="carrier_ontime_daily",
    entities=[carrier],
    ttl=timedelta(days=2),
    schema=[
        Field(name="flights_landed_7d", dtype=Int64),
        Field(name="ontime_rate_7d", dtype=Float64),
        Field(name="mean_arr_delay_7d", dtype=Float64),
        Field(name="cancel_rate_7d", dtype=Float64),
    ],
    source=carrier_stats_source,
    online=True,
    tags={"owner": "flights", "source": "carrier_stats"},
)

flight_delay_features = FeatureService(
    name="flight_delay_features",
    features=[weather_hourly, plane_specs, carrier_ontime_daily],
    description="Input contract of the flight delay model (features fetched from the store).",
)
