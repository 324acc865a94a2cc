"""MLflow adapter: the only module that imports ``mlflow``.

Aliases are read with ``get_registered_model`` (``search_model_versions`` returns empty aliases).
Every MLflow failure is wrapped into :class:`RegistryError` with a one-line message.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from prodguard.errors import RegistryError, first_line, redact
from prodguard.registry.config import RegistryConfig
from prodguard.telemetry import disable_telemetry

ALIASES = ("champion", "standby", "candidate")


@dataclass(frozen=True)
class ModelVersion:
    version: int
    run_id: str
    created: datetime
    tags: dict[str, str]
    aliases: tuple[str, ...] = ()


@contextmanager
def _wrapped(action: str) -> Iterator[None]:
    """Wrap MLflow errors into RegistryError; silence MLflow's own deprecation warnings."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    except RegistryError:
        raise
    except Exception as exc:  # noqa: BLE001 - MlflowException, SQLAlchemy, OS errors
        text = str(exc).strip().splitlines()
        raise RegistryError(
            f"{action} failed: {(text[0] if text else type(exc).__name__)[:300]}"
        ) from None


class MlflowRegistry:
    def __init__(self, config: RegistryConfig, model_name: str) -> None:
        disable_telemetry()
        import mlflow
        from mlflow import MlflowClient

        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self.config = config
        self.model_name = model_name
        self._mlflow = mlflow
        for uri in (config.tracking_uri, config.registry_uri, config.audit_uri):
            _make_sqlite_parent(uri)
        # a local folder is created; a URI is not (s3://..., file:///..., and the MLflow
        # server's proxied mlflow-artifacts:/prodguard, which has no "//")
        if ":" not in config.artifact_location.split("/", 1)[0]:
            Path(config.artifact_location).mkdir(parents=True, exist_ok=True)
        for uri in {config.tracking_uri, config.registry_uri}:
            _preflight(uri)
        # the fluent API (log_model, load_model) reads the process-wide URIs
        mlflow.set_tracking_uri(config.tracking_uri)
        mlflow.set_registry_uri(config.registry_uri)
        with _wrapped(f"connecting to the MLflow store {redact(config.tracking_uri)}"):
            self._client = MlflowClient(
                tracking_uri=config.tracking_uri, registry_uri=config.registry_uri
            )

    # ---- reads -------------------------------------------------------------------------

    def aliases(self) -> dict[str, int | None]:
        """Current value of each prodguard alias (None where unset or no model yet)."""
        return self._aliases_and_tags()[0]

    def model_tag(self, key: str) -> str | None:
        """A tag of the registered model (None where unset or no model yet)."""
        return self._aliases_and_tags()[1].get(key)

    def aliases_and_tag(self, key: str) -> tuple[dict[str, int | None], str | None]:
        """The aliases and one model tag from a single read (what every replica polls)."""
        aliases, tags = self._aliases_and_tags()
        return aliases, tags.get(key)

    def _aliases_and_tags(self) -> tuple[dict[str, int | None], dict[str, str]]:
        with _wrapped("reading aliases"):
            model = self._registered_model()
            found = dict(model.aliases) if model is not None else {}
            tags = dict(model.tags) if model is not None else {}
        return {alias: int(found[alias]) if alias in found else None for alias in ALIASES}, tags

    def set_model_tag(self, key: str, value: str) -> None:
        with _wrapped(f"setting model tag {key}"):
            self._client.set_registered_model_tag(self.model_name, key, value)

    def version(self, version: int) -> ModelVersion:
        from mlflow.exceptions import MlflowException

        try:
            found = self._client.get_model_version(self.model_name, str(version))
        except MlflowException as exc:
            if "not found" in str(exc).lower() or "RESOURCE_DOES_NOT_EXIST" in str(exc):
                raise RegistryError(
                    f"model '{self.model_name}' has no version {version}; "
                    "see `prodguard status` for the versions there are"
                ) from None
            raise RegistryError(f"reading version {version} failed: {first_line(exc)}") from None
        except Exception as exc:  # noqa: BLE001 - store unreachable etc.
            raise RegistryError(f"reading version {version} failed: {first_line(exc)}") from None
        return _to_version(found)

    def versions(self) -> list[ModelVersion]:
        with _wrapped("listing model versions"):
            if self._registered_model() is None:
                return []
            found = self._client.search_model_versions(f"name='{self.model_name}'")
        return sorted((_to_version(v) for v in found), key=lambda v: v.version)

    def load_model(self, version: int) -> Any:
        with _wrapped(f"loading model version {version}"):
            return self._mlflow.sklearn.load_model(f"models:/{self.model_name}/{version}")

    def load_json_artifact(self, version: int, name: str) -> Any:
        info = self.version(version)
        with (
            _wrapped(f"reading artifact {name} of version {version}"),
            tempfile.TemporaryDirectory() as tmp,
        ):
            path = self._mlflow.artifacts.download_artifacts(
                run_id=info.run_id,
                artifact_path=name,
                dst_path=tmp,
                tracking_uri=self.config.tracking_uri,
            )
            return json.loads(Path(path).read_text(encoding="utf-8"))

    # ---- writes --------------------------------------------------------------------------

    def log_version(
        self,
        model: Any,
        input_example: pd.DataFrame,
        params: dict[str, Any],
        metrics: dict[str, float],
        tags: dict[str, str],
        artifacts: dict[str, Any],
        pip_requirements: list[str],
    ) -> int:
        """Log a training run with the model, register it, tag the version; returns it."""
        from mlflow.models import infer_signature

        mlflow = self._mlflow
        with (
            _wrapped("logging the model to MLflow"),
            warnings.catch_warnings(),
            contextlib.redirect_stderr(io.StringIO()),  # "Successfully registered model ..."
        ):
            warnings.simplefilter("ignore")
            experiment_id = self._experiment_id()
            signature = infer_signature(input_example, model.predict_proba(input_example)[:, 1])
            with mlflow.start_run(experiment_id=experiment_id) as run:
                mlflow.log_params(params)
                mlflow.log_metrics(metrics)
                mlflow.set_tags(tags)
                for name, document in artifacts.items():
                    mlflow.log_dict(document, name)
                logged = mlflow.sklearn.log_model(
                    model,
                    name="model",
                    skops_trusted_types=_own_types(model),
                    signature=signature,
                    input_example=input_example,
                    pip_requirements=pip_requirements,
                    registered_model_name=self.model_name,
                )
            version = int(logged.registered_model_version)
            for key, value in tags.items():
                self._client.set_model_version_tag(self.model_name, str(version), key, value)
            self._client.set_model_version_tag(
                self.model_name, str(version), "prodguard.run_id", run.info.run_id
            )
        return version

    def set_alias(self, alias: str, version: int) -> None:
        with _wrapped(f"setting alias {alias}"):
            self._client.set_registered_model_alias(self.model_name, alias, str(version))

    def delete_alias(self, alias: str) -> None:
        with _wrapped(f"removing alias {alias}"):
            self._client.delete_registered_model_alias(self.model_name, alias)

    def log_json_artifact(self, version: int, name: str, document: Any) -> None:
        """Store ``document`` as artifact ``name`` of the version's run (replacing it)."""
        info = self.version(version)
        with _wrapped(f"writing artifact {name} of version {version}"):
            self._client.log_dict(info.run_id, document, name)

    def set_version_tag(self, version: int, key: str, value: str) -> None:
        with _wrapped(f"tagging version {version}"):
            self._client.set_model_version_tag(self.model_name, str(version), key, value)

    # ---- helpers -------------------------------------------------------------------------

    def _registered_model(self) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return self._client.get_registered_model(self.model_name)
        except MlflowException as exc:
            if "RESOURCE_DOES_NOT_EXIST" in str(exc) or "not found" in str(exc).lower():
                return None
            raise

    def _experiment_id(self) -> str:
        found = self._client.get_experiment_by_name(self.config.experiment)
        if found is not None:
            return found.experiment_id
        return self._client.create_experiment(
            self.config.experiment, artifact_location=self.config.artifact_location
        )


def _own_types(model: Any) -> list[str]:
    """Types skops does not trust by default, found in a model this process just built."""
    import skops.io

    return list(skops.io.get_untrusted_types(data=skops.io.dumps(model)))


def _to_version(found: Any) -> ModelVersion:
    return ModelVersion(
        version=int(found.version),
        run_id=found.run_id,
        created=datetime.fromtimestamp(found.creation_timestamp / 1000, tz=UTC),
        tags=dict(found.tags),
        aliases=tuple(getattr(found, "aliases", ()) or ()),
    )


def _preflight(uri: str, timeout_seconds: int = 5) -> None:
    """Fail fast on an unreachable database store (MLflow itself retries for ~100 s)."""
    if "://" not in uri or uri.split("://", 1)[0].split("+")[0] not in ("postgresql", "mysql"):
        return
    import sqlalchemy as sa

    engine = sa.create_engine(uri, connect_args={"connect_timeout": timeout_seconds})
    try:
        with engine.connect():
            pass
    except sa.exc.SQLAlchemyError as exc:
        raise RegistryError(
            f"the MLflow store {redact(uri)} is not reachable "
            f"({first_line(getattr(exc, 'orig', exc), 200)}); start it or fix "
            "tracking_uri in the registry config"
        ) from None
    finally:
        engine.dispose()


def _make_sqlite_parent(uri: str) -> None:
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
