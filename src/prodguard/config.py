"""One settings object: ``prodguard.yaml`` plus ``PRODGUARD_*`` environment overrides.

Overrides use ``__`` to reach nested keys: ``PRODGUARD_PATHS__DATA_DIR=/srv/pg`` sets
``paths.data_dir``. Values are parsed as YAML scalars or lists
(``PRODGUARD_SOURCES__ITEMS__KEYS=[item_id]``).
Relative paths are resolved against the folder holding the config file. Nothing is read at
import time: call :func:`load_settings`.

``PRODGUARD_ENV=<name>`` selects an environment: the ``environments.<name>`` section of the file
is merged over the rest (``production`` points the same code at PostgreSQL and Redis). Within
that section ``${VAR}`` / ``${VAR:-default}`` are filled from the environment, so credentials stay
out of files; a credential written into the file itself is refused.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from prodguard.errors import ConfigError
from prodguard.templates import fill_placeholders, read_text_file, refuse_credentials

ENV_PREFIX = "PRODGUARD_"
CONFIG_ENV = "PRODGUARD_CONFIG"
ENVIRONMENT_ENV = "PRODGUARD_ENV"
DEFAULT_CONFIG_NAME = "prodguard.yaml"
_NOT_SETTINGS = {CONFIG_ENV, ENVIRONMENT_ENV, "PRODGUARD_DEBUG"}  # DEBUG: CLI tracebacks
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# secrets: taken from the environment as given, refused when written into the file
_VERBATIM = {("serving", "admin_token")}
_PLACEHOLDER = re.compile(r"^\$\{[A-Z_][A-Z0-9_]*\}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProjectSettings(_Strict):
    name: str = Field(min_length=1)
    loader: str = Field(
        description="'module:Class' of the project's SourceLoader (reads its raw tables)."
    )

    @field_validator("loader")
    @classmethod
    def _dotted(cls, value: str) -> str:
        module, _, attr = value.partition(":")
        if not module or not attr or not all(_IDENTIFIER.match(p) for p in module.split(".")):
            raise ValueError("must look like 'package.module:ClassName'")
        return value


class PathSettings(_Strict):
    data_dir: Path = Path(".prodguard")
    feature_repo: Path = Path("feature_repo")
    expectations: Path = Path("expectations")

    @property
    def offline_dir(self) -> Path:
        return self.data_dir / "offline"

    @property
    def quarantine_dir(self) -> Path:
        return self.data_dir / "quarantine"

    @property
    def state_dir(self) -> Path:
        return self.data_dir / "state"

    @property
    def prediction_log(self) -> Path:
        return self.data_dir / "predictions.db"

    @property
    def aggregates(self) -> Path:
        return self.data_dir / "aggregates.db"

    @property
    def reports_dir(self) -> Path:
        return self.data_dir / "reports"

    @property
    def staging_dir(self) -> Path:
        return self.data_dir / "staging"

    @property
    def alerts_file(self) -> Path:
        return self.data_dir / "alerts.jsonl"


class FeatureStoreSettings(_Strict):
    config: Path = Path("feature_repo/feature_store.yaml")
    feature_service: str = Field(min_length=1)


class IngestSettings(_Strict):
    batch: Literal["month", "day", "window"] = "month"


class ModelSettings(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    source: str = Field(description="The source whose rows are the labelled examples.")
    label: str
    entity_keys: list[str] = Field(min_length=1, description="Join keys sent to the feature store.")
    request_features: str = Field(
        description="'module:function' deriving model features from request fields."
    )
    request_features_columns: str | None = Field(
        default=None,
        description="Optional 'module:function': request_features on columns (dict column -> "
        "list of values in and out), used by the serving path; checked against "
        "request_features on real rows when serving and training.",
    )
    task: Literal["binary", "multiclass", "regression"] = Field(
        default="binary", description="What the model predicts (see docs: Tasks)."
    )
    trainer: str | None = Field(
        default=None,
        description="'module:function' (features, label, *, task, seed) -> fitted model with "
        "predict_proba (classifiers) or predict (regression); default: histogram gradient "
        "boosting.",
    )
    positive_class: str | int | bool | None = Field(
        default=None, description="binary: the label value that is the positive class."
    )
    seed: int = 42
    threshold: float = Field(default=0.5, gt=0, lt=1)
    evaluation_days: int = Field(default=30, ge=1)

    @field_validator("request_features", "request_features_columns", "trainer")
    @classmethod
    def _dotted(cls, value: str | None) -> str | None:
        return None if value is None else ProjectSettings._dotted(value)

    @model_validator(mode="after")
    def _positive_only_for_binary(self) -> ModelSettings:
        if self.positive_class is not None and self.task != "binary":
            raise ValueError("positive_class applies only to model.task: binary")
        return self


class ServingSettings(_Strict):
    request_model: str = Field(
        description="'module:Class' of the pydantic request model: to_row() -> dict gives the "
        "source-shaped row, from_row(dict) builds the request a source row stands for (replays)."
    )
    poll_seconds: float = Field(default=5.0, gt=0, le=3600)
    feature_timeout_ms: float = Field(default=100.0, gt=0, le=60000)
    fallback: Literal["median", "last_good"] = "median"
    fallback_overrides: dict[str, Literal["median", "last_good"]] = Field(default_factory=dict)
    critical_features: list[str] = Field(default_factory=list)
    shadow_sample: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Share of requests the standby (or, beside a canary, the champion) also "
        "scores, off the response path: the guard's paired reference.",
    )
    shadow_burst: int = Field(
        default=1000,
        ge=0,
        description="Requests after the served versions change (per replica) that the "
        "reference scores in full, so the guard's paired tests decide within a few hundred "
        "requests; then shadow_sample (0 turns both off).",
    )
    max_batch: int = Field(
        default=1000,
        ge=1,
        le=100000,
        description="Rows per /predict_batch (and items per /feedback_batch) call; more: 413.",
    )
    log_sync: Literal["FULL", "NORMAL"] = "FULL"
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="BentoML worker processes of one serve process (up to one per core). Each "
        "loads the models, follows the registry and writes the shared prediction log; "
        "max_in_flight and shadow_burst count per worker; the in-service guard runs in the "
        "first worker only.",
    )
    max_body_bytes: int = Field(
        default=1_048_576,
        ge=1024,
        le=256 * 1_048_576,
        description="Largest request body (bytes); larger: 413 before the body is read.",
    )
    max_in_flight: int = Field(
        default=64,
        ge=1,
        le=10000,
        description="Prediction/feedback requests served at once per serve process; more: 429 "
        "with Retry-After at once (never queued). A request that overran its deadline counts until "
        "its work ends.",
    )
    request_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="Deadline of a prediction/feedback request; overrun: 504 (a retry with the "
        "same request_id replays a prediction made meanwhile). Keep it above "
        "feature_timeout_ms: that deadline degrades features instead of failing.",
    )
    admin_token: SecretStr | None = Field(
        default=None,
        min_length=16,
        description="Bearer token of the /admin endpoints (promote, rollback, rollout, status); "
        "from the environment only (PRODGUARD_SERVING__ADMIN_TOKEN), refused in the file. "
        "Unset: the admin endpoints answer 403.",
    )

    @field_validator("request_model")
    @classmethod
    def _dotted(cls, value: str) -> str:
        return ProjectSettings._dotted(value)


class RegistrySettings(_Strict):
    config: Path = Path("mlruns_config/local.yaml")


class DemoSettings(_Strict):
    story: str = Field(
        description="module:attribute of the project's demo story (what `prodguard demo` plays)."
    )


class StorageSettings(_Strict):
    url: str | None = Field(
        default=None,
        description="Database of prodguard's own records (prediction log, feedback, request "
        "errors, alerts and their de-duplication state): a SQLAlchemy URL "
        "postgresql+psycopg://user:password@host:5432/db, from the environment. Unset: SQLite "
        "and files in the data folder (one host).",
    )
    log_retention_days: float | None = Field(
        default=None,
        gt=0,
        description="Predictions (with their feedback) and request errors older than this many "
        "days are dropped by `prodguard log prune` (optionally exported to parquet first); "
        "never what monitors still read (monitoring.window.minutes + kpi.maturity_hours). "
        "Unset: the log keeps everything.",
    )

    @field_validator("url")
    @classmethod
    def _postgres(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgresql://", "postgresql+psycopg://")):
            raise ValueError("must be a postgresql:// or postgresql+psycopg:// URL")
        return value


class ClockSettings(_Strict):
    file: Path | None = Field(
        default=None,
        description="Simulated time: read 'now' from this file (an ISO 8601 instant) instead of "
        "the system clock, in every process given the same file (replays, the demo).",
    )


class WindowSettings(_Strict):
    """Monitoring windows: by time (``minutes``, a new window every ``step_minutes``), by count
    (``rows``), or both — a window then closes at whichever bound comes first."""

    minutes: float | None = Field(default=10080, gt=0)
    step_minutes: float | None = Field(
        default=1440, gt=0, description="Time windows start this often (hopping windows)."
    )
    rows: int | None = Field(default=None, ge=1)
    min_rows: int = Field(default=200, ge=1, description="Fewer rows: 'insufficient data'.")
    max_rows: int = Field(
        default=200_000, ge=1000, description="Larger windows are sampled (bounded memory)."
    )

    @model_validator(mode="after")
    def _some_bound(self) -> WindowSettings:
        if self.minutes is None and self.rows is None:
            raise ValueError("give minutes, rows or both")
        return self


class KpiSettings(_Strict):
    """The business KPI: mean cost per labelled prediction (lower is better), from feedback.
    Its name and the feedback key of the true label are the project's own: no default.

    Per task without ``cost``: binary, ``cost_missed``/``cost_false_alert``; regression, the
    mean absolute error; multiclass, ``cost_matrix[actual][predicted]`` or the error rate."""

    name: str = Field(description="The KPI's name in findings and alerts (kpi.<name>).")
    outcome: str = Field(description="Feedback key holding the true label.")
    cost_missed: float = Field(default=1.0, ge=0, description="Cost of a missed positive.")
    cost_false_alert: float = Field(default=0.25, ge=0, description="Cost of a false alert.")
    cost_matrix: dict[str, dict[str, float]] | None = Field(
        default=None, description="multiclass: cost of predicting a class (inner) for another."
    )
    cost: str | None = Field(
        default=None,
        description="'module:function' (outcomes, predictions) -> cost per row, any task.",
    )
    maturity_hours: float = Field(
        default=24, ge=0, description="A window's KPI is computed only this long after it ends."
    )
    min_labelled: int = Field(default=100, ge=1)

    @field_validator("cost")
    @classmethod
    def _dotted(cls, value: str | None) -> str | None:
        return None if value is None else ProjectSettings._dotted(value)


class BandSettings(_Strict):
    warning: float = Field(gt=0)
    critical: float = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> BandSettings:
        if self.critical < self.warning:
            raise ValueError("critical must be at least warning")
        return self


class AggregateSettings(_Strict):
    """Window aggregates: each serving replica summarises what it logs per time bucket, model
    version and role (feature bin counts, exact score and cost sums, latency sketches, error
    counts), and monitors measure time windows from the summaries instead of raw rows."""

    enabled: bool = Field(
        default=False,
        description="Replicas write window summaries and monitors read them (off: every pass "
        "reads the window's raw rows).",
    )
    bucket_seconds: int = Field(
        default=60,
        ge=1,
        le=3600,
        description="Length of a summary's time bucket in seconds; must divide a day (buckets "
        "align on midnight UTC) and be the same for every replica and monitor.",
    )
    flush_seconds: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="A replica writes the buckets that closed this often (and all on shutdown); "
        "a crash loses at most this much plus the open bucket (rebuild it from the log).",
    )
    pairing_capacity: int = Field(
        default=50_000,
        ge=100,
        description="Requests a replica remembers to pair its shadow scores with its answers.",
    )
    edge_rows: int = Field(
        default=20_000,
        ge=0,
        description="Rows a window or a guard check reads from the raw log beyond the "
        "aggregates (its partial buckets at each end, what replicas have not flushed yet); "
        "beyond it, only the whole buckets are measured (at high traffic a window then ends up "
        "to a bucket plus flush_seconds earlier).",
    )

    @field_validator("bucket_seconds")
    @classmethod
    def _divides_a_day(cls, value: int) -> int:
        if 86400 % value:
            raise ValueError(
                f"{value} s does not divide a day; choose e.g. 10, 30, 60, 300 or 900 seconds"
            )
        return value


class MonitoringSettings(_Strict):
    window: WindowSettings = WindowSettings()
    aggregates: AggregateSettings = AggregateSettings()
    bins: int = Field(default=10, ge=2, le=100, description="Quantile bins of the score PSI.")
    psi: BandSettings = BandSettings(warning=0.1, critical=0.25)
    spread: BandSettings = Field(
        default=BandSettings(warning=1.5, critical=2.0),
        description="Warning/critical beyond the baseline mean plus this many times the metric's "
        "spread (the largest deviation staging showed).",
    )
    kpi: KpiSettings
    reports_max_rows: int = Field(default=20_000, ge=100)
    calendar_features: dict[str, float] = Field(
        default_factory=dict,
        description="Features that cycle with the calendar, with their period in minutes (e.g. "
        "day_of_week: 10080): their PSI and shift are judged only on windows at least that "
        "long (a day of the week on a daily window is always one value).",
    )

    @field_validator("calendar_features")
    @classmethod
    def _periods(cls, value: dict[str, float]) -> dict[str, float]:
        bad = sorted(name for name, minutes in value.items() if not minutes > 0)
        if bad:
            raise ValueError(f"calendar_features: give each a period in minutes > 0 ({bad})")
        return value


class TriggerSettings(_Strict):
    """Rollback triggers, evaluated on live traffic of the champion (and of a canary)."""

    prediction_shift_sd: float = Field(
        default=3.0, gt=0, description="|mean score - baseline mean| in baseline sd."
    )
    kpi_worse_pct: float = Field(
        default=5.0, gt=0, description="KPI worse than its baseline mean by this many percent."
    )
    error_rate: float = Field(default=0.01, gt=0, le=1, description="Budget of rate.failed.")
    p99_latency_ms: float = Field(
        default=250.0, gt=0, description="Budget of the request path's p99 (latency.total.p99)."
    )
    critical_psi_features: list[str] = Field(
        default_factory=list, description="Features whose critical PSI (or shift) rolls back."
    )
    min_requests: int = Field(
        default=200, ge=1, description="Fewer requests of a version: inconclusive, no action."
    )
    alpha: float = Field(
        default=0.01,
        gt=0,
        lt=1,
        description="Error bound of every sequential trigger decision (false fire, false clean), "
        "however often the guard looks.",
    )
    prediction_shift_min: float | None = Field(
        default=None,
        gt=0,
        description="Smallest prediction shift that matters, in score units (default: "
        "prediction_shift_sd x the baseline's score sd).",
    )
    degraded_margin: float = Field(
        default=0.05,
        gt=0,
        le=1,
        description="A data incident: the last hour's share of requests with degraded features "
        "above the baseline's share by more than this. Model moves hold meanwhile.",
    )


class RolloutSettings(_Strict):
    standby_hours: float = Field(
        default=72,
        ge=72,
        description="A standby stays at least this long after a promotion; a promotion that "
        "would drop a younger one is refused (lower only with the audited override flag).",
    )
    guard_minutes: float = Field(
        default=1440,
        gt=0,
        description="How far back the guard looks at a version's traffic when the time it went "
        "live is unknown (else its tests run from that time).",
    )
    canary_steps: list[float] = Field(
        default_factory=lambda: [5.0, 25.0, 100.0],
        description="Canary shares in percent; each step bakes before the next.",
    )

    @field_validator("canary_steps")
    @classmethod
    def _steps(cls, value: list[float]) -> list[float]:
        if not value or value != sorted(set(value)) or value[0] <= 0 or value[-1] != 100:
            raise ValueError("must be increasing percentages ending at 100, e.g. [5, 25, 100]")
        return value

    bake_minutes: float = Field(default=60, ge=0, description="Each step lasts at least this.")
    bake_min_requests: int = Field(
        default=500, ge=1, description="...and sees at least this many requests of the candidate."
    )
    sticky_fields: list[str] = Field(
        default_factory=list,
        description="Request fields that keep a caller on one side of a canary "
        "(default: the model's entity keys).",
    )
    guard_in_service_seconds: float | None = Field(
        default=None,
        gt=0,
        description="Run the guard inside every `prodguard serve` replica this often (seconds); "
        "replicas are safe together: one moves the aliases, the others see them moved.",
    )
    require_drill: bool = Field(
        default=False,
        description="Promotion needs a passed `prodguard drill` (rollback rehearsal and latency "
        "within triggers.p99_latency_ms) younger than drill_max_age_hours.",
    )
    drill_max_age_hours: float = Field(default=168, gt=0)
    triggers: TriggerSettings = TriggerSettings()


class AlertSettings(_Strict):
    webhook_url: str | None = Field(
        default=None,
        description="Slack-compatible JSON webhook; set it from the environment "
        "(PRODGUARD_ALERTS__WEBHOOK_URL), not in the file.",
    )
    webhook_timeout_s: float = Field(default=5.0, gt=0, le=60)
    incident_gap_hours: float = Field(
        default=24,
        gt=0,
        le=24 * 90,
        description="Alerts of one cause join its open incident; an incident resolves once its "
        "monitor conditions cleared and no alert of its cause came for this long.",
    )

    @field_validator("webhook_url")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value


class SourceSettings(_Strict):
    suite: Path
    timestamp: str = "event_timestamp"
    keys: list[str] = Field(min_length=1)
    static: bool = Field(
        default=False,
        description="A reference table with no time axis (ingested whole, once per window).",
    )


class Settings(_Strict):
    project: ProjectSettings
    paths: PathSettings = PathSettings()
    feature_store: FeatureStoreSettings
    ingest: IngestSettings = IngestSettings()
    sources: dict[str, SourceSettings] = Field(min_length=1)
    model: ModelSettings | None = None
    registry: RegistrySettings = RegistrySettings()
    serving: ServingSettings | None = None
    monitoring: MonitoringSettings
    rollout: RolloutSettings = RolloutSettings()
    alerts: AlertSettings = AlertSettings()
    demo: DemoSettings | None = None
    clock: ClockSettings = ClockSettings()
    storage: StorageSettings = StorageSettings()
    environment: str = Field(default="local", exclude=True)
    variables: dict[str, str] = Field(default_factory=dict, exclude=True)
    config_path: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _model_source(self) -> Settings:
        if self.model is not None and self.model.source not in self.sources:
            raise ValueError(f"model.source '{self.model.source}' is not one of the sources")
        return self

    @field_validator("sources")
    @classmethod
    def _names(cls, value: dict[str, SourceSettings]) -> dict[str, SourceSettings]:
        for name in value:
            if not _IDENTIFIER.match(name):
                raise ValueError(f"source name '{name}' must be an identifier (letters, digits, _)")
        return value

    def suite_path(self, source: str) -> Path:
        return self.paths.expectations / self.sources[source].suite

    @property
    def template_variables(self) -> dict[str, str]:
        """What fills the ``${VARS}`` of tool configs (registry, Feast): the data folder and
        the ``PRODGUARD_*`` variables of the environment the settings were loaded from."""
        return {**self.variables, "PRODGUARD_DATA_DIR": str(self.paths.data_dir)}


def _resolve(settings: Settings, base: Path) -> Settings:
    def absolute(path: Path) -> Path:
        return path if path.is_absolute() else (base / path).resolve()

    paths = settings.paths.model_copy(
        update={name: absolute(getattr(settings.paths, name)) for name in PathSettings.model_fields}
    )
    feature_store = settings.feature_store.model_copy(
        update={"config": absolute(settings.feature_store.config)}
    )
    registry = settings.registry.model_copy(update={"config": absolute(settings.registry.config)})
    clock = settings.clock.model_copy(
        update={"file": absolute(settings.clock.file) if settings.clock.file else None}
    )
    return settings.model_copy(
        update={
            "paths": paths,
            "feature_store": feature_store,
            "registry": registry,
            "clock": clock,
        }
    )


def _overrides(environ: dict[str, str]) -> dict[str, tuple[str, ...]]:
    """The ``PRODGUARD_SECTION__KEY`` variables, each with the settings path it sets."""
    found = {}
    for key in sorted(environ):
        if not key.startswith(ENV_PREFIX) or key in _NOT_SETTINGS:
            continue
        if _is_variable(key):
            continue  # PRODGUARD_DATABASE_URL & co: ${VARIABLES} of the files, not settings
        found[key] = tuple(p.lower() for p in key[len(ENV_PREFIX) :].split("__"))
    return found


def _apply_env(raw: dict[str, Any], environ: dict[str, str]) -> dict[str, Any]:
    for key, parts in _overrides(environ).items():
        value = environ[key]
        if not all(parts):
            raise ConfigError(f"{key}: empty key segment; use PRODGUARD_SECTION__KEY=value")
        node = raw
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{key}: '{part}' is not a section; cannot set a key below it")
            node = child
        if tuple(parts) in _VERBATIM:
            node[parts[-1]] = value  # a secret is a string as given, never YAML-parsed
            continue
        try:
            node[parts[-1]] = yaml.safe_load(value) if value != "" else ""
        except yaml.YAMLError:
            raise ConfigError(f"{key}: value is not a valid YAML scalar or list") from None
    return raw


def _is_variable(key: str) -> bool:
    return "__" not in key and key[len(ENV_PREFIX) :].lower() not in Settings.model_fields


def _format_validation(
    error: ValidationError, origin: str, overrides: dict[str, tuple[str, ...]]
) -> str:
    """One line for the first problem, naming the ``PRODGUARD_*`` variable when the setting
    came from the environment (``overrides``) rather than from the file ``origin``."""
    first = error.errors()[0]
    loc = tuple(str(p) for p in first["loc"])
    where = ".".join(loc) or "(top level)"
    kind = first["type"]
    more = f" (and {len(error.errors()) - 1} more problem(s))" if len(error.errors()) > 1 else ""
    for key, path in overrides.items():
        if kind == "extra_forbidden" and path[: len(loc)] == loc:
            wrong = ".".join(path)
            hint = _did_you_mean(path, len(loc) - 1)
            return f"{key}: unknown setting {wrong} (from the environment); {hint}{more}"
        if kind != "extra_forbidden" and loc[: len(path)] == path:
            return f"{key}: {where}: {first['msg']} (from the environment){more}"
    if kind == "extra_forbidden":
        hint = "unknown key; remove it or check its spelling"
    elif kind == "missing":
        hint = "required key is missing; add it"
    else:
        hint = first["msg"]
    below = [
        key
        for key, path in overrides.items()
        if loc
        and (path[: len(loc)] == loc or (kind == "missing" and path[: len(loc) - 1] == loc[:-1]))
    ]
    if below:  # a section's check on a file's value and an overridden one, or a section (e.g.
        # sources.<misspelt name>) that an override made and the file never completed
        origin = f"{origin} with {', '.join(below)} from the environment"
    return f"{origin}: {where}: {hint}{more}"


def _did_you_mean(path: tuple[str, ...], wrong: int) -> str:
    """The hint for ``path`` whose part ``wrong`` is not a setting: the closest known key."""
    section: Any = Settings
    for part in path[:wrong]:
        section = _section(section, part)
    known = (
        [name for name, field in section.model_fields.items() if not field.exclude]
        if isinstance(section, type) and issubclass(section, BaseModel)
        else []
    )
    close = difflib.get_close_matches(path[wrong], known, n=1)
    if not close:
        return "remove the variable or check its spelling"
    return f"did you mean {'.'.join((*path[:wrong], close[0], *path[wrong + 1 :]))}?"


def _section(section: Any, part: str) -> Any:
    """The type of ``section``'s key ``part``: a settings model, a mapping of them, or None."""
    if get_origin(section) is dict:
        kind = get_args(section)[1]  # sources: {name: SourceSettings}
    elif isinstance(section, type) and issubclass(section, BaseModel):
        field = section.model_fields.get(part)
        kind = field.annotation if field is not None else None
    else:
        return None
    if isinstance(kind, UnionType) or get_origin(kind) is Union:  # ServingSettings | None
        kind = next((a for a in get_args(kind) if a is not type(None)), None)
    return kind


def find_config(explicit: Path | str | None = None, environ: dict[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if explicit is not None:
        candidate = Path(explicit)  # a team's script passes a str as often as a Path
    elif env.get(CONFIG_ENV):
        candidate = Path(env[CONFIG_ENV])
    else:
        candidate = Path.cwd() / DEFAULT_CONFIG_NAME
    if not candidate.is_file():
        raise ConfigError(
            f"config file {candidate} not found; run from the project folder, pass --config, "
            f"or set {CONFIG_ENV}"
        )
    return candidate.resolve()


def load_settings(
    path: Path | str | None = None, environ: dict[str, str] | None = None
) -> Settings:
    """Read, override and validate the settings. Raises ConfigError naming the bad key."""
    env = dict(os.environ if environ is None else environ)
    config_path = find_config(path, env)
    try:
        raw = yaml.safe_load(read_text_file(config_path, ConfigError))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{config_path.name}: not valid YAML{where}; fix the syntax") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{config_path.name}: top level must be a mapping of sections")
    refuse_credentials(raw, config_path.name, ConfigError)
    refuse_secrets(raw, config_path.name)
    environment = env.get(ENVIRONMENT_ENV) or "local"
    raw = _select_environment(raw, environment, env, config_path.name)
    raw = _apply_env(raw, env)
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc, config_path.name, _overrides(env))) from None
    variables = {
        k: v
        for k, v in env.items()
        if k.startswith(ENV_PREFIX) and k not in _NOT_SETTINGS and _is_variable(k)
    }
    settings = settings.model_copy(
        update={"config_path": config_path, "environment": environment, "variables": variables}
    )
    _importable(config_path.parent)
    return _resolve(settings, config_path.parent)


def _importable(folder: Path) -> None:
    """The project's own modules (loader, request model) may live next to its prodguard.yaml:
    the folder goes last on ``sys.path``, so an installed package of the same name still wins."""
    if str(folder) not in sys.path:
        sys.path.append(str(folder))


def refuse_secrets(raw: dict[str, Any], origin: str) -> None:
    """A secret setting (``serving.admin_token``) comes from the environment only: written into
    the file it is refused; an environment section may name a ``${VARIABLE}`` holding it."""
    sections: list[tuple[str, Any, bool]] = [("", raw, False)]
    environments = raw.get("environments")
    if isinstance(environments, dict):
        sections += [(f"environments.{n}.", e, True) for n, e in environments.items()]
    for prefix, section, placeholders in sections:
        for path in _VERBATIM:
            node: Any = section
            for part in path:
                node = node.get(part) if isinstance(node, dict) else None
            if node is None or (placeholders and _PLACEHOLDER.match(str(node))):
                continue
            key = "__".join(path).upper()
            raise ConfigError(
                f"{origin}: {prefix}{'.'.join(path)} holds a secret; remove it from the file and "
                f"set {ENV_PREFIX}{key} in the environment"
            )


def _select_environment(
    raw: dict[str, Any], name: str, environ: dict[str, str], origin: str
) -> dict[str, Any]:
    """The file's settings with ``environments.<name>`` merged over them (``local``: none)."""
    environments = raw.pop("environments", None) or {}
    if not isinstance(environments, dict):
        raise ConfigError(f"{origin}: environments must be a mapping of environment names")
    if name == "local" and name not in environments:
        return raw
    if name not in environments:
        known = ", ".join(sorted(environments)) or "none"
        raise ConfigError(
            f"{ENVIRONMENT_ENV}={name}: {origin} has no environments.{name} section "
            f"(environments: {known}); unset {ENVIRONMENT_ENV} or add the section"
        )
    overlay = environments[name]
    if not isinstance(overlay, dict):
        raise ConfigError(f"{origin}: environments.{name} must be a mapping of sections")
    overlay = fill_placeholders(overlay, environ, f"{origin} (environments.{name})", ConfigError)
    return _merged(raw, overlay)


def _merged(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged
