"""Feast adapter: the only module that imports ``feast``.

- The store configuration is ``feature_repo/feature_store.yaml`` with ``${PRODGUARD_DATA_DIR}``
  (and any other ``${VAR}`` from the environment) substituted.
- Definitions are loaded from the ``*.py`` files of the feature repo by path (no dependence on
  the working directory) and applied through the library; Feast records a new version of a
  feature view each time its definition changes.
- Relative ``FileSource`` paths are made absolute under the offline store folder when the
  definitions are loaded (Feast's offline stores disagree on what a relative path is relative to).
- Historical retrieval checks that no entity row was dropped by the point-in-time join.
- Online reads on the request path (``online_records``) go straight to the views' rows when the
  online store is Feast's SQLite or Redis store, through the store's own ``online_read``
  (``get_online_features`` resolves the feature service in the registry at every call: ~7 ms);
  other online stores are read through ``get_online_features``.
- The production configuration (``feature_store.production.yaml``) keeps the registry in
  PostgreSQL (Feast's SQL registry) and the online store in Redis; errors from either never
  echo credentials.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from prodguard.config import Settings
from prodguard.errors import FeatureStoreError, ProdguardError, first_line, redact
from prodguard.telemetry import disable_telemetry
from prodguard.templates import load_yaml_template

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class ViewVersion:
    name: str
    version: int | None
    entities: tuple[str, ...]
    join_keys: tuple[str, ...]
    source: str
    ttl_seconds: float
    features: tuple[tuple[str, str], ...]


def feature_contract(views: list[ViewVersion]) -> list[list[str]]:
    """The feature service as [["view:feature", "Type"], ...]: what model versions record and
    what promotion and serving compare against."""
    return [[f"{v.name}:{f}", t] for v in views for f, t in v.features]


@dataclass(frozen=True)
class MaterializeResult:
    start: datetime | None
    end: datetime
    views: tuple[ViewVersion, ...]
    online_rows: dict[str, int]


def render_store_config(settings: Settings) -> dict[str, Any]:
    """The feature_store.yaml of the settings, with variables substituted."""
    return load_yaml_template(
        settings.feature_store.config,
        settings.template_variables,
        FeatureStoreError,
    )


class FeastStore:
    def __init__(self, settings: Settings, *, serving: bool = False) -> None:
        """``serving``: in a serving process, Feast is imported without run-time type checks
        (see ``_import_feast_unchecked``), unless something imported it before."""
        disable_telemetry()
        for name in ("feast", "feast.infra", "feast.feature_store"):
            logging.getLogger(name).setLevel(logging.WARNING)
        if serving:
            _import_feast_unchecked()
        from feast import FeatureStore
        from feast.repo_config import RepoConfig

        self.settings = settings
        self.offline_dir = settings.paths.offline_dir
        self.offline_dir.mkdir(parents=True, exist_ok=True)
        raw = render_store_config(settings)
        for key in ("registry", "online_store"):
            section = raw.get(key)
            target = section.get("path") if isinstance(section, dict) else section
            if isinstance(target, str) and "://" not in target:
                Path(target).parent.mkdir(parents=True, exist_ok=True)
        try:
            config = RepoConfig(repo_path=settings.paths.feature_repo, **raw)
        except Exception as exc:  # noqa: BLE001 - pydantic / Feast config errors
            raise FeatureStoreError(
                f"{settings.feature_store.config.name} is invalid: {redact(first_line(exc))}"
            ) from None
        with _feast_errors("opening the Feast feature store"):
            self._store = FeatureStore(config=config)
        self._direct: _DirectReads | Literal[False] | None = None  # built at the first online read
        self._direct_lock = threading.Lock()
        # DuckDB's progress bar is turned off before the first offline read (importing ibis
        # here would cost a serving process ~0.3 s of cold start for nothing)
        self._offline_quieted = raw.get("offline_store", {}).get("type") != "duckdb"

    @property
    def project(self) -> str:
        return self._store.project

    # ---- definitions -------------------------------------------------------------------

    def load_definitions(self) -> Any:
        """Import every ``*.py`` of the feature repo by path and collect Feast objects."""
        from feast import Entity, FeatureService, FeatureView
        from feast.data_source import DataSource
        from feast.repo_contents import RepoContents

        repo = self.settings.paths.feature_repo
        files = sorted(p for p in repo.glob("*.py") if not p.name.startswith("_"))
        if not files:
            raise FeatureStoreError(f"no Feast definition files (*.py) in {repo}")
        objects: dict[str, list[Any]] = {
            "entities": [],
            "feature_views": [],
            "feature_services": [],
            "data_sources": [],
        }
        kinds = (
            (Entity, "entities"),
            (FeatureView, "feature_views"),
            (FeatureService, "feature_services"),
            (DataSource, "data_sources"),
        )
        for path in files:
            module = _import_path(path)
            for value in vars(module).values():
                for cls, key in kinds:
                    if isinstance(value, cls) and not any(value is o for o in objects[key]):
                        objects[key].append(value)
        for view in objects["feature_views"]:
            if view.batch_source is not None and not any(
                view.batch_source is s for s in objects["data_sources"]
            ):
                objects["data_sources"].append(view.batch_source)
        for source in objects["data_sources"]:
            self._anchor(source)
        return RepoContents(
            projects=[],
            data_sources=objects["data_sources"],
            feature_views=objects["feature_views"],
            on_demand_feature_views=[],
            stream_feature_views=[],
            label_views=[],
            entities=objects["entities"],
            feature_services=objects["feature_services"],
            permissions=[],
        )

    def _anchor(self, source: Any) -> None:
        """Make a relative FileSource path absolute, under the offline store folder."""
        from feast import FileSource

        path = getattr(source, "path", "") if isinstance(source, FileSource) else ""
        if path and "://" not in path and not Path(path).is_absolute():
            source.file_options.uri = str(self.offline_dir / path)

    def apply(self) -> list[ViewVersion]:
        """Apply the feature repo (idempotent); returns the versions now in use."""
        from feast.repo_operations import extract_objects_for_apply_delete

        contents = self.load_definitions()
        names = {s.name for s in contents.feature_services}
        wanted = self.settings.feature_store.feature_service
        if wanted not in names:
            raise FeatureStoreError(
                f"feature service '{wanted}' is not defined in {self.settings.paths.feature_repo}; "
                f"defined: {sorted(names)}"
            )
        with _feast_errors("feast apply"):
            to_apply, to_delete, _, _ = extract_objects_for_apply_delete(
                self.project, self._store.registry, contents
            )
            self._store.apply(to_apply, objects_to_delete=to_delete, partial=False)
        return self.versions()

    def versions(self) -> list[ViewVersion]:
        """Feature views of the feature service with the version Feast recorded for each."""
        service = self._feature_service()
        result = []
        for projection in service.feature_view_projections:
            with _feast_errors(f"reading feature view '{projection.name}'"):
                view = self._store.get_feature_view(projection.name)
            result.append(
                ViewVersion(
                    name=view.name,
                    version=self._version_number(view.name),
                    entities=tuple(view.entities),
                    join_keys=tuple(c.name for c in view.entity_columns),
                    source=view.batch_source.name,
                    ttl_seconds=view.ttl.total_seconds() if view.ttl else 0.0,
                    features=tuple((f.name, str(f.dtype)) for f in projection.features),
                )
            )
        return result

    def _version_number(self, view_name: str) -> int | None:
        # Feast stores v0 as proto3's default 0, which reads back as None: use its records.
        with _feast_errors(f"reading the versions of '{view_name}'"):
            records = self._store.list_feature_view_versions(view_name)
        return max((int(r["version_number"]) for r in records), default=None)

    def feature_refs(self) -> list[str]:
        """``view:feature`` references of the feature service (the model's input contract)."""
        service = self._feature_service()
        return [
            f"{p.name_to_use()}:{f.name}"
            for p in service.feature_view_projections
            for f in p.features
        ]

    def _feature_service(self) -> Any:
        from feast.errors import FeatureServiceNotFoundException

        name = self.settings.feature_store.feature_service
        try:
            return self._store.get_feature_service(name)
        except FeatureServiceNotFoundException:
            raise FeatureStoreError(
                f"feature service '{name}' is not in the registry; run `prodguard materialize` "
                "(it applies the feature repo) first"
            ) from None
        except Exception as exc:  # noqa: BLE001 - the registry's store (PostgreSQL, file) failed
            raise FeatureStoreError(
                f"reading the Feast registry failed: {redact(first_line(exc))}"
            ) from None

    # ---- materialization -----------------------------------------------------------------

    def materialize(self, until: datetime, start: datetime | None = None) -> MaterializeResult:
        """Load the latest feature values as of ``until`` into the online store.

        Each view is loaded from ``until - ttl`` (older rows are expired at ``until`` anyway),
        so rows that arrived late — a quarantined batch fixed and re-ingested — are picked up;
        ``start`` loads from an earlier time instead. ``until`` may not be earlier than a previous
        run's: the online store would go back in time. (Feast's ``materialize_incremental`` is
        not used: its first run starts at wall-clock now - ttl, which breaks replays.)
        """
        versions = self.apply()
        views = [v.name for v in versions]
        missing = [v for v in views if not self._source_path(v).exists()]
        if missing:
            raise FeatureStoreError(
                f"no offline data for feature view(s) {missing}; run `prodguard ingest` first"
            )
        self._quiet_offline()
        with _feast_errors("feast materialize"):
            for name in views:
                view = self._store.get_feature_view(name)
                done = [end for begin, end in view.materialization_intervals if begin < end]
                if done and until < max(done):
                    raise FeatureStoreError(
                        f"the online store already holds '{name}' as of {max(done):%Y-%m-%d %H:%M}"
                        " UTC; --until may not be earlier (replay into a fresh data folder)"
                    )
                ttl = view.ttl if view.ttl and view.ttl.total_seconds() > 0 else None
                begin = start if start is not None else (until - ttl if ttl else EPOCH)
                with _quiet():
                    self._store.materialize(start_date=begin, end_date=until, feature_views=[name])
        return MaterializeResult(
            start=start,
            end=until,
            views=tuple(versions),
            online_rows=self.online_row_counts(versions),
        )

    def push(self, view_name: str, rows: pd.DataFrame) -> None:
        """Write rows of a view's source (join keys, ``event_timestamp``, features) to the online
        store as they are observed — a streaming pipeline's write, used by replays to keep the
        online store as of their clock; later rows of an entity replace earlier ones."""
        if rows.empty:
            return
        with _feast_errors(f"writing '{view_name}' to the online store"), _quiet():
            self._store.write_to_online_store(view_name, rows)

    def _quiet_offline(self) -> None:
        if not self._offline_quieted:
            _quiet_duckdb()
            self._offline_quieted = True

    def materialized_until(self) -> datetime | None:
        """The time every view of the feature service is materialized up to (None: a view
        never was)."""
        ends = []
        for version in self.versions():
            with _feast_errors(f"reading feature view '{version.name}'"):
                view = self._store.get_feature_view(version.name)
            done = [end for begin, end in view.materialization_intervals if begin < end]
            if not done:
                return None
            ends.append(max(done))
        return min(ends) if ends else None

    def _source_path(self, view_name: str) -> Path:
        with _feast_errors(f"reading feature view '{view_name}'"):
            view = self._store.get_feature_view(view_name)
        return Path(view.batch_source.path)

    def online_row_counts(self, views: list[ViewVersion]) -> dict[str, int]:
        """Entities per view in the online store (SQLite and Redis; empty for other stores)."""
        kind = getattr(self._store.config.online_store, "type", "sqlite")
        if kind == "redis":
            with _feast_errors("counting the online store's rows"):
                return self._redis_row_counts(views)
        if kind != "sqlite":
            return {}
        import sqlite3

        db = Path(self._store.config.online_store.path)
        if not db.is_absolute():
            db = self.offline_dir / db
        if not db.exists():
            return {}
        counts = {}
        with sqlite3.connect(db) as conn:
            for view in views:
                table = f"{self.project}_{view.name}"
                try:
                    row = conn.execute(
                        f'SELECT COUNT(DISTINCT entity_key) FROM "{table}"'  # noqa: S608
                    ).fetchone()
                except sqlite3.Error:
                    continue
                counts[view.name] = int(row[0])
        return counts

    def _redis_row_counts(self, views: list[ViewVersion]) -> dict[str, int]:
        """Feast's Redis layout: one hash per entity key (``<serialized key><project>``), with a
        ``_ts:<view>`` field for each view written there. Counted by SCAN over the keys of the
        views' join keys in this project: it walks the whole Redis database, so it costs about a
        second per million keys (run after a materialization, never on the request path)."""
        from feast.infra.key_encoding_utils import serialize_entity_key_prefix

        config = self._store.config
        if config.entity_key_serialization_version < 3:
            return {}  # the layout read below is version 3's
        client = self._store._get_provider().online_store._get_client(config.online_store)
        project = config.project.encode()
        counts = {}
        for view in views:
            prefix = serialize_entity_key_prefix(list(view.join_keys), 3)
            field = f"_ts:{view.name}".encode()
            count, batch = 0, []
            pattern = _glob_escape(prefix) + b"*" + _glob_escape(project)
            for key in client.scan_iter(match=pattern, count=1000):
                if not _in_project(key, len(prefix), len(view.join_keys), project):
                    continue  # another project whose name ends with this one's
                batch.append(key)
                if len(batch) == 1000:
                    count += _count_fields(client, batch, field)
                    batch = []
            counts[view.name] = count + _count_fields(client, batch, field)
        return counts

    # ---- reads -------------------------------------------------------------------------------

    def online_features(self, entity_rows: list[dict[str, Any]]) -> pd.DataFrame:
        """Feature-service values for each entity row, with each view's event timestamp
        (``<feature>__ts``, Unix seconds; 0 when the store has no row), through Feast's
        ``get_online_features``."""
        service = self._feature_service()
        with _feast_errors("online lookup"):
            response = self._store.get_online_features(features=service, entity_rows=entity_rows)
        return response.to_df(include_event_timestamps=True)

    def online_records(self, entity_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``online_features`` as one dict per entity row (feature values and ``__ts``), the
        request path's read: straight from the online store's rows when the store is Feast's
        SQLite or Redis store, else through ``get_online_features``."""
        direct = self._direct
        if direct is None:
            with self._direct_lock:
                if self._direct is None:
                    self._direct = self._direct_reader()
                direct = self._direct
        if direct is not False:
            with _feast_errors("online lookup"):
                return direct.read(entity_rows)
        return self.online_features(entity_rows).to_dict("records")

    def _direct_reader(self) -> _DirectReads | Literal[False]:
        kind = getattr(self._store.config.online_store, "type", None)
        if kind not in ("sqlite", "redis"):
            return False  # stores whose reads are not tested against Feast's: Feast's path
        service = self._feature_service()
        if any(p.join_key_map for p in service.feature_view_projections):
            return False  # renamed join keys: leave them to Feast
        if kind == "sqlite":
            from feast.infra.online_stores.sqlite import SqliteOnlineStore

            online = SqliteOnlineStore()
        else:  # the provider's store: its client (and connection pool) is shared with Feast's
            online = self._store._get_provider().online_store
        ttl = getattr(self._store.config.registry, "cache_ttl_seconds", 60) or 60
        return _DirectReads(self._store, online, self.settings.feature_store.feature_service, ttl)

    def historical_features(self, entity_df: pd.DataFrame) -> pd.DataFrame:
        """Point-in-time-correct features for ``entity_df`` (needs ``event_timestamp``).

        Raises FeatureStoreError if the join returned a different number of rows (the file
        offline store can silently drop entity rows).
        """
        if "event_timestamp" not in entity_df.columns:
            raise FeatureStoreError("entity frame needs an 'event_timestamp' column")
        service = self._feature_service()
        self._quiet_offline()
        with _feast_errors("historical retrieval"), _quiet():
            frame = self._store.get_historical_features(
                entity_df=entity_df, features=service
            ).to_df()
        if len(frame) != len(entity_df):
            raise FeatureStoreError(
                f"point-in-time join returned {len(frame)} rows for {len(entity_df)} entity rows "
                f"({len(entity_df) - len(frame)} dropped); check entity keys and timestamps"
            )
        return frame


class _DirectReads:
    """Online reads of a feature service from Feast's online store, one read of the store per
    view (entity keys serialized by Feast, values decoded by Feast; on Redis the store's own
    ``online_read``, one pipelined HMGET per view; on SQLite ``online_read``'s query, each
    distinct stored value parsed and decoded once instead of once per row: a scalar's decoded
    value is kept across calls, keyed by its stored bytes, so a value the store still holds is
    not parsed again), each distinct entity of a batch read and decoded once. The views are
    resolved in the registry once per ``refresh_s`` (Feast's registry cache TTL), not at every
    call; the output equals
    ``get_online_features(...).to_df(include_event_timestamps=True)`` row by row, without the
    entity columns."""

    def __init__(self, store: Any, online: Any, service: str, refresh_s: float) -> None:
        self._store = store
        self._service = service
        self._refresh_s = refresh_s
        self._online = online
        from feast.infra.online_stores.sqlite import SqliteOnlineStore

        self._sqlite = type(online) is SqliteOnlineStore  # read by ``_sqlite_read``
        self._views: list[tuple[Any, tuple[str, ...], tuple[tuple[str, Any], ...]]] = []
        self._resolved_at = -float("inf")
        self._lock = threading.Lock()
        # stored bytes -> decoded scalar, across calls (bytes decode to one value whenever read)
        self._scalars: dict[bytes, Any] = {}

    def _resolved(self) -> list[tuple[Any, tuple[str, ...], tuple[tuple[str, Any], ...]]]:
        """(view, feature names of the service, (join key, value type)) per view."""
        if time.monotonic() - self._resolved_at < self._refresh_s:
            return self._views
        with self._lock:
            if time.monotonic() - self._resolved_at >= self._refresh_s:
                service = self._store.get_feature_service(self._service)
                views = []
                for projection in service.feature_view_projections:
                    view = self._store.get_feature_view(projection.name)
                    keys = tuple((c.name, c.dtype.to_value_type()) for c in view.entity_columns)
                    views.append((view, tuple(f.name for f in projection.features), keys))
                self._views, self._resolved_at = views, time.monotonic()
        return self._views

    def read(self, entity_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.type_map import python_values_to_proto_values

        records: list[dict[str, Any]] = [{} for _ in entity_rows]
        for view, names, keys in self._resolved():
            # each distinct entity of the view is read and decoded once (a batch repeats them)
            places: dict[tuple[Any, ...], int] = {}
            chosen: list[tuple[Any, ...]] = []
            rows = []
            for row in entity_rows:
                values = tuple(row.get(k) for k, _ in keys)
                distinct = tuple((type(v), v) for v in values)
                place = places.get(distinct)
                if place is None:
                    place = places[distinct] = len(chosen)
                    chosen.append(values)
                rows.append(place)
            protos = [  # per join key, its values of the distinct entities, converted at once
                python_values_to_proto_values([values[i] for values in chosen], kind)
                for i, (_, kind) in enumerate(keys)
            ]
            entity_keys = [
                EntityKey(join_keys=[k for k, _ in keys], entity_values=list(values))
                for values in zip(*protos, strict=True)
            ]
            decoded = self._decoded(view, entity_keys, names)
            if len(decoded) != len(chosen):
                raise ValueError(f"the online store answered {len(decoded)} of {len(chosen)} rows")
            for record, place in zip(records, rows, strict=True):
                record.update(decoded[place])
        return records

    def _decoded(
        self, view: Any, entity_keys: list[Any], names: tuple[str, ...]
    ) -> list[dict[str, Any]]:
        """Each entity's record of the view: every feature's value (None when absent) and its
        ``__ts``. Each distinct stored value and event time of the call is decoded once."""
        from feast.type_map import feast_value_type_to_python_type

        if not self._sqlite:
            found: list[tuple[datetime | None, dict[str, Any] | None]] = self._online.online_read(
                self._store.config, view, entity_keys, list(names)
            )
            decode = feast_value_type_to_python_type
        else:
            found = self._sqlite_read(view, entity_keys)
            decode = _decode_stored
        scalars = self._scalars
        values_of: dict[Any, Any] = {}  # stored value (bytes) -> its Python value, this call
        seconds_of: dict[Any, int] = {}  # event time -> Unix seconds
        decoded = []
        for stamp, values in found:
            seconds = seconds_of.get(stamp)
            if seconds is None:
                seconds = seconds_of[stamp] = _seconds(stamp)
            record: dict[str, Any] = {}
            for name in names:
                value = values.get(name) if values else None
                if value is None:
                    record[name] = None
                elif not self._sqlite:  # a ValueProto of its own
                    record[name] = decode(value)
                else:
                    known = scalars.get(value, _UNSEEN)
                    if known is _UNSEEN:
                        known = values_of.get(value, _UNSEEN)
                    if known is _UNSEEN:
                        known = values_of[value] = decode(value)
                        if type(known) in _SCALARS:  # immutable: shared by later calls
                            if len(scalars) >= SCALARS_KEPT:
                                scalars.clear()
                            scalars[value] = known
                    record[name] = known
                record[f"{name}__ts"] = seconds
            decoded.append(record)
        return decoded

    def _sqlite_read(
        self, view: Any, entity_keys: list[Any]
    ) -> list[tuple[datetime | None, dict[str, bytes] | None]]:
        """``SqliteOnlineStore.online_read``'s query and rows (its entity keys, table, order and
        event times), with each value left as its stored bytes (``_decoded`` parses each
        distinct one once) instead of a ``ValueProto`` parsed per row."""
        from feast.infra.key_encoding_utils import serialize_entity_key
        from feast.infra.online_stores.sqlite import _quote_id, _table_id

        config = self._store.config
        serialized = [
            serialize_entity_key(
                key, entity_key_serialization_version=config.entity_key_serialization_version
            )
            for key in entity_keys
        ]
        table = _quote_id(
            _table_id(config.project, view, config.registry.enable_online_feature_view_versioning)
        )
        cursor = self._online._get_conn(config).cursor()
        cursor.execute(
            f"SELECT entity_key, feature_name, value, event_ts FROM {table} "  # noqa: S608
            f"WHERE entity_key IN ({','.join('?' * len(serialized))}) ORDER BY entity_key",
            serialized,
        )
        grouped: dict[bytes, list[tuple[Any, ...]]] = {}
        for row in cursor.fetchall():
            grouped.setdefault(row[0], []).append(row)
        found: list[tuple[datetime | None, dict[str, bytes] | None]] = []
        for key in serialized:
            group = grouped.get(key)
            if not group:
                found.append((None, None))
            else:  # the event time of its last row, as Feast's
                found.append((_utc(group[-1][3]), {row[1]: row[2] for row in group}))
        return found


_UNSEEN = object()
_SCALARS = (int, float, str, bool, bytes)
SCALARS_KEPT = 100_000  # decoded scalars kept across calls (then forgotten at once, re-learnt)


def _utc(stamp: datetime) -> datetime:
    """An event time as Feast's SQLite store gives it: in UTC (a naive one read as UTC)."""
    if stamp.tzinfo is not None:
        return stamp.astimezone(UTC)
    return stamp.replace(tzinfo=UTC)


def _seconds(stamp: datetime | None) -> int:
    return int(stamp.timestamp()) if stamp is not None else 0


def _decode_stored(data: bytes) -> Any:
    """A value as Feast's SQLite store keeps it, decoded as Feast decodes it."""
    from feast.protos.feast.types.Value_pb2 import Value
    from feast.type_map import feast_value_type_to_python_type

    value = Value()
    value.ParseFromString(data)
    return feast_value_type_to_python_type(value)


def _glob_escape(pattern: bytes) -> bytes:
    """``pattern`` matched literally by Redis' glob (serialized keys hold arbitrary bytes)."""
    for special in (b"\\", b"*", b"?", b"[", b"]"):
        pattern = pattern.replace(special, b"\\" + special)
    return pattern


def _in_project(key: bytes, start: int, values: int, project: bytes) -> bool:
    """Whether a Redis key is ``<serialized entity key><project>``: after the join key names
    come ``values`` values, each as type (4 bytes), length (4 bytes, little endian), bytes."""
    position = start
    for _ in range(values):
        if len(key) < position + 8:
            return False
        position += 8 + int.from_bytes(key[position + 4 : position + 8], "little")
    return key[position:] == project


def _count_fields(client: Any, keys: list[bytes], field: bytes) -> int:
    if not keys:
        return 0
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hexists(key, field)
        return sum(bool(found) for found in pipe.execute())


def _import_feast_unchecked() -> None:
    """Import Feast with typeguard's ``@typechecked`` (the run-time type checks on Feast's own
    API) turned into a no-op while Feast's modules load. Instrumenting recompiles each decorated
    function's source at import: 2.2 of Feast's 3.3 s import here, a quarter of a service's cold
    start; checks also run at every checked call (registry reads build Feast objects). prodguard's
    calls into Feast are the same in every process and covered by the tests, which run with the
    checks; ``prodguard materialize`` (which applies user definitions) keeps them. typeguard itself
    is left as it was for anything imported later."""
    if "feast" in sys.modules:
        return
    import typeguard

    def unchecked(target: Any = None, **_: Any) -> Any:
        return target if target is not None else (lambda f: f)

    checked = typeguard.typechecked
    typeguard.typechecked = unchecked
    try:
        import feast  # noqa: F401
    finally:
        typeguard.typechecked = checked


def _quiet_duckdb() -> None:
    """Feast's DuckDB offline store runs on ibis' default backend: turn its progress bar off."""
    import duckdb
    import ibis

    backend = ibis.get_backend()
    if getattr(backend, "name", "") == "duckdb":
        # in a notebook without ipywidgets DuckDB draws no bar and refuses the setting
        with contextlib.suppress(duckdb.InvalidInputException):
            backend.raw_sql("SET enable_progress_bar = false")


@contextlib.contextmanager
def _feast_errors(action: str) -> Iterator[None]:
    """Wrap Feast's exceptions into FeatureStoreError (prodguard's own pass through)."""
    try:
        yield
    except ProdguardError:
        raise
    except Exception as exc:  # noqa: BLE001 - Feast raises many types
        raise FeatureStoreError(f"{action} failed: {redact(first_line(exc))}") from None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Swallow Feast's progress prints and its engines' deprecation warnings."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def _import_path(path: Path) -> Any:
    name = f"_prodguard_feature_repo_{path.stem}_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise FeatureStoreError(f"cannot import Feast definitions from {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - user code
        sys.modules.pop(name, None)
        raise FeatureStoreError(
            f"Feast definitions {path.name} failed to load: {first_line(exc)}"
        ) from None
    return module
