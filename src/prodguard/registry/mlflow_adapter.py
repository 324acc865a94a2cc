"""MLflow adapter: the only module that imports ``mlflow``.

Aliases are read with ``get_registered_model`` (``search_model_versions`` returns empty aliases).
Every MLflow failure is wrapped into :class:`RegistryError` with a one-line message; a store that
cannot be reached (server down, database refusing connections) is :class:`RegistryUnavailable`
(exit code 5, safe to retry).

**Artifact integrity.** At registration the model's artifact directory is read back from the
artifact store exactly as stored (``get_model_version_download_uri``: the files MLflow wrote —
``MLmodel``, ``model.skops``, ``conda.yaml``, ``python_env.yaml``, ``requirements.txt``, the
input examples — nothing excluded) and its digest is recorded on the version as
``prodguard.artifact_sha256``. :meth:`MlflowRegistry.load_model` downloads the directory once,
checks the digest and loads from that verified local copy (never a second download): with
``mlflow.sklearn.load_model`` when the model has the sklearn flavor, else with
``mlflow.pyfunc.load_model`` wrapped in :class:`PyfuncRegressor` / :class:`PyfuncClassifier`
(the interface the core scores: ``predict`` values, ``predict_proba`` + ``classes_``). A version
whose files differ, or that has no recorded digest, is refused with
:class:`ArtifactIntegrityError` and never deserialised. Refusing digest-less versions (rather
than accepting them with a warning) is deliberate: an unverified model is exactly what a tampered
one looks like. Versions registered before this check are re-registered by training the same
window again (training is deterministic), or with ``prodguard train``.

**Fail fast over HTTP.** MLflow's HTTP client retries 7 times with exponential backoff and a
120 s timeout per request (minutes before an error when the server is down). For an ``http(s)``
tracking URI prodguard's processes default to ``MLFLOW_HTTP_REQUEST_MAX_RETRIES=2``,
``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR=1``, ``MLFLOW_HTTP_REQUEST_BACKOFF_JITTER=0.5`` and
``MLFLOW_HTTP_REQUEST_TIMEOUT=10`` (seconds); a value set in the environment wins.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from prodguard.errors import (
    ArtifactIntegrityError,
    ModelContractError,
    RegistryError,
    RegistryUnavailable,
    first_line,
    redact,
)
from prodguard.registry import lineage
from prodguard.registry.config import RegistryConfig
from prodguard.tasks import spec_from_tags
from prodguard.telemetry import disable_telemetry

ALIASES = ("champion", "standby", "candidate")
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
# what a store that cannot be reached says (requests/urllib3 over HTTP, psycopg, SQLAlchemy)
_UNREACHABLE = (  # the most telling first: the first one found is quoted in the message
    "connection refused",
    "failed to establish a new connection",
    "connection aborted",
    "remote end closed connection",
    "read timed out",
    "connect timeout",
    "could not connect to server",
    "connection to server at",
    "server closed the connection unexpectedly",
    "name or service not known",
    "temporary failure in name resolution",
    "max retries exceeded",
)


@dataclass(frozen=True)
class ModelVersion:
    version: int
    run_id: str
    created: datetime
    tags: dict[str, str]
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class ForeignModel:
    """A model logged to MLflow outside prodguard, as ``open_model`` found it."""

    uri: str
    inputs: tuple[tuple[str, str], ...] | None  # the signature's input columns and types
    model: Any  # the native sklearn model, or a PyfuncRegressor / PyfuncClassifier
    registered_version: int | None  # its version when the URI names one of the project model's
    flavor: str = "sklearn"  # or "python_function": anything else MLflow loads as a pyfunc


PYFUNC_CLASSIFIER_HINT = (
    "a classifier's pyfunc must return class probabilities from predict: a DataFrame with one "
    "column per class label, or an (n, classes) array with the labels in --classes; log a "
    'sklearn-like model with pyfunc_predict_fn="predict_proba", or return such a frame from a '
    "custom PythonModel"
)


_CASTS = {"long": "int64", "integer": "int32", "float": "float32"}


class PyfuncRegressor:
    """A model without the sklearn flavor, loaded as an MLflow pyfunc: ``predict(frame)`` is its
    pyfunc's output as values (n,) (a one-column DataFrame or a Series is taken as its values;
    anything else is returned as an array for ``tasks.check_output`` to judge)."""

    flavor = "python_function"

    def __init__(self, pyfunc: Any, keep: Any = None) -> None:
        self._pyfunc = pyfunc
        self._keep = keep  # the verified local copy, alive as long as the model (code paths)
        schema = pyfunc.metadata.get_input_schema()
        names = schema.input_names() if schema is not None and schema.has_input_names() else []
        types = [str(getattr(t, "name", t)) for t in (schema.input_types() if names else [])]
        # prodguard's rows carry numerics as float64: the signature's integer and float32
        # columns are cast to what MLflow's schema enforcement accepts
        self._casts = {
            name: _CASTS[kind] for name, kind in zip(names, types, strict=True) if kind in _CASTS
        }

    def _output(self, frame: pd.DataFrame) -> Any:
        casts = {
            c: t
            for c, t in self._casts.items()
            if c in frame.columns and (t == "float32" or frame[c].notna().all())
        }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self._pyfunc.predict(frame.astype(casts) if casts else frame)

    def predict(self, frame: pd.DataFrame) -> Any:
        out = self._output(frame)
        if isinstance(out, pd.DataFrame) and out.shape[1] == 1:
            return out.iloc[:, 0].to_numpy()
        array = out.to_numpy() if isinstance(out, (pd.DataFrame, pd.Series)) else np.asarray(out)
        return array.reshape(-1) if array.ndim == 2 and array.shape[1] == 1 else array


class PyfuncClassifier(PyfuncRegressor):
    """A classifier loaded as an MLflow pyfunc whose ``predict`` returns class probabilities:
    a DataFrame whose columns are the class labels (reordered to ``classes`` when given; else
    its columns become ``classes_``), or an (n, k) array in the order of ``classes``.
    ModelContractError (one line) when it returns anything else (labels, one value per row)."""

    def __init__(self, pyfunc: Any, classes: tuple[Any, ...] = (), keep: Any = None) -> None:
        super().__init__(pyfunc, keep)
        self.classes_: tuple[Any, ...] | None = tuple(classes) or None

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        out = self._output(frame)
        if isinstance(out, pd.DataFrame) and out.shape[1] >= 2:
            return self._columns(out)
        array = out.to_numpy() if isinstance(out, (pd.DataFrame, pd.Series)) else np.asarray(out)
        if array.ndim != 2 or array.shape[1] < 2 or not np.issubdtype(array.dtype, np.number):
            raise ModelContractError(
                f"its pyfunc returns {_kind(array)} per row; {PYFUNC_CLASSIFIER_HINT}"
            )
        return array.astype("float64")

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """The most probable class of each row."""
        probabilities = self.predict_proba(frame)
        labels = self.classes_ or tuple(range(probabilities.shape[1]))
        return np.array([labels[j] for j in probabilities.argmax(axis=1)], dtype=object)

    def _columns(self, out: pd.DataFrame) -> np.ndarray:
        columns = list(out.columns)
        if self.classes_ is None:
            self.classes_ = tuple(columns)
        order = [
            next((j for j, c in enumerate(columns) if same_label(c, k)), -1) for k in self.classes_
        ]
        if -1 in order or len(set(order)) != len(columns):
            raise ModelContractError(
                f"its pyfunc returns probability columns {[str(c) for c in columns]} but its "
                f"classes are {[str(c) for c in self.classes_]}; return one column per class label"
            )
        return out.to_numpy(dtype="float64")[:, order]


def same_label(a: Any, b: Any) -> bool:
    """Whether two spellings name the same class label ("1", 1 and 1.0 do)."""
    if str(a) == str(b):
        return True
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return False


def _kind(array: np.ndarray) -> str:
    if array.ndim <= 1 or array.shape[1] == 1:
        numeric = np.issubdtype(array.dtype, np.number)
        return "one value" if numeric else "one label"
    return f"{array.shape[1]} non-numeric values"


def pyfunc_model(
    pyfunc: Any, classifier: bool, classes: tuple[Any, ...] = (), keep: Any = None
) -> PyfuncRegressor:
    """The core's view of a pyfunc: a PyfuncClassifier or a PyfuncRegressor."""
    if classifier:
        return PyfuncClassifier(pyfunc, classes, keep)
    return PyfuncRegressor(pyfunc, keep)


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
        raise registry_error(action, exc) from None


def registry_error(action: str, exc: BaseException, store: str = "the registry") -> RegistryError:
    """One line: RegistryUnavailable when ``store`` could not be reached, else RegistryError."""
    if unreachable(exc):
        return RegistryUnavailable(
            f"{action} failed: {store} is not reachable ({_reach_detail(exc)}); "
            "nothing changed — retry when it is back"
        )
    return RegistryError(f"{action} failed: {first_line(exc)}")


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says the store could not be reached."""
    seen: BaseException | None = exc
    for _ in range(6):
        if seen is None:
            return False
        if isinstance(seen, (ConnectionError, TimeoutError)):
            return True
        text = str(seen).lower()
        if any(marker in text for marker in _UNREACHABLE):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _reach_detail(exc: BaseException) -> str:
    text = str(exc).lower()
    for marker in _UNREACHABLE:
        if marker in text:
            return marker
    return type(exc).__name__


class MlflowRegistry:
    def __init__(self, config: RegistryConfig, model_name: str) -> None:
        disable_telemetry()
        import mlflow
        from mlflow import MlflowClient

        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
        # one line per retry of a server that is down: the outage is reported once, by us
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
        self.config = config
        self.model_name = model_name
        self._mlflow = mlflow
        if any(
            u.startswith(("http://", "https://"))
            for u in (config.tracking_uri, config.registry_uri)
        ):
            for key, value in HTTP_DEFAULTS.items():
                os.environ.setdefault(key, value)
        # no progress bars on stderr for every verified download
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
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
            raise registry_error(f"reading version {version}", exc) from None
        except Exception as exc:  # noqa: BLE001 - store unreachable etc.
            raise registry_error(f"reading version {version}", exc) from None
        return _to_version(found)

    def versions(self) -> list[ModelVersion]:
        with _wrapped("listing model versions"):
            if self._registered_model() is None:
                return []
            found = self._client.search_model_versions(f"name='{self.model_name}'")
        return sorted((_to_version(v) for v in found), key=lambda v: v.version)

    def load_model(self, version: int) -> Any:
        """The version's model, loaded from a local copy of its artifact directory whose digest
        equals the one recorded at registration; ArtifactIntegrityError (nothing deserialised)
        when it differs or none was recorded."""
        tags = self.version(version).tags
        recorded = tags.get(lineage.ARTIFACT_DIGEST)
        if not recorded:
            raise ArtifactIntegrityError(
                f"v{version} has no recorded artifact digest ({lineage.ARTIFACT_DIGEST}): it was "
                "registered before prodguard verified model artifacts (or its registration was "
                "interrupted), so it is not loaded; re-register it — train the same window again "
                "with `prodguard train` (training is deterministic)"
            )
        folder = tempfile.TemporaryDirectory(prefix="prodguard-model-")
        tmp: tempfile.TemporaryDirectory[str] | None = folder
        try:
            local = self._download_model(version, Path(folder.name))
            found = directory_digest(local)
            if found != recorded:
                raise ArtifactIntegrityError(
                    f"v{version}'s stored model artifact does not match the digest recorded at "
                    f"registration (sha256 {found[:12]}..., recorded {recorded[:12]}...): it was "
                    "modified or damaged in the artifact store and is not loaded; restore the "
                    "artifact or register the model again"
                )
            with _wrapped(f"loading model version {version}"):
                from mlflow.models import Model

                flavors = Model.load(str(local / "MLmodel")).flavors
                if "sklearn" in flavors:
                    return self._mlflow.sklearn.load_model(str(local))
                with contextlib.redirect_stderr(io.StringIO()):
                    pyfunc = self._mlflow.pyfunc.load_model(str(local))
                spec = spec_from_tags(tags)
                model = pyfunc_model(pyfunc, spec.task.classifier, spec.classes, keep=tmp)
                tmp = None  # the model keeps its local copy
                return model
        finally:
            if tmp is not None:
                tmp.cleanup()

    def open_model(
        self, uri: str, classifier: bool = True, classes: tuple[Any, ...] = ()
    ) -> ForeignModel:
        """The model at ``uri`` (``models:/NAME/VERSION`` or ``runs:/RUN_ID/PATH``), its signature
        and its model: the native sklearn model, else its pyfunc as a PyfuncClassifier (with
        ``classes``: the labels of an array's columns) or PyfuncRegressor; ModelContractError
        (one line) when it cannot be loaded, RegistryUnavailable when the store cannot be
        reached."""
        if not uri.startswith(("models:/", "runs:/")):
            raise ModelContractError(
                f"--model-uri '{uri}' is neither models:/NAME/VERSION nor runs:/RUN_ID/PATH"
            )
        try:
            with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
                warnings.simplefilter("ignore")
                pyfunc = self._mlflow.pyfunc.load_model(uri)
        except Exception as exc:  # noqa: BLE001 - MlflowException, OSError, unpickling errors
            if unreachable(exc):
                raise registry_error(f"loading {uri}", exc) from None
            raise ModelContractError(
                f"cannot load the model at {uri} ({first_line(exc, 160)}); check the URI "
                "(models:/NAME/VERSION or runs:/RUN_ID/PATH) and the tracking URI of the "
                "registry config"
            ) from None
        metadata = pyfunc.metadata
        sklearn = "sklearn" in metadata.flavors
        schema = metadata.get_input_schema()
        inputs = None
        if schema is not None and schema.has_input_names():
            inputs = tuple((c.name, str(getattr(c.type, "name", c.type))) for c in schema.inputs)
        return ForeignModel(
            uri=uri,
            inputs=inputs,
            model=pyfunc.get_raw_model() if sklearn else pyfunc_model(pyfunc, classifier, classes),
            registered_version=self._registered_version(uri),
            flavor="sklearn" if sklearn else "python_function",
        )

    def _registered_version(self, uri: str) -> int | None:
        parts = uri[len("models:/") :].split("/") if uri.startswith("models:/") else []
        if len(parts) == 2 and parts[0] == self.model_name and parts[1].isdigit():
            return int(parts[1])
        return None

    def adopt_version(
        self,
        found: ForeignModel,
        params: dict[str, Any],
        metrics: dict[str, float],
        tags: dict[str, str],
        artifacts: dict[str, Any],
    ) -> int:
        """Record an adoption run (params, metrics, tags, lineage artifacts), register the model
        as a version of the project's model unless it already is one, tag the version (its
        run-id tag is the adoption run, where its artifacts are) and record the digest
        of its stored artifact; returns the version."""
        mlflow = self._mlflow
        with (
            _wrapped(f"adopting {found.uri}"),
            warnings.catch_warnings(),
            contextlib.redirect_stderr(io.StringIO()),  # "Successfully registered model ..."
        ):
            warnings.simplefilter("ignore")
            with mlflow.start_run(experiment_id=self._experiment_id()) as run:
                mlflow.log_params({**params, "model_uri": found.uri})
                mlflow.log_metrics(metrics)
                mlflow.set_tags(tags)
                for name, document in artifacts.items():
                    mlflow.log_dict(document, name)
            version = found.registered_version
            if version is None:
                registered = mlflow.register_model(found.uri, self.model_name)
                version = int(registered.version)
            for key, value in {**tags, lineage.RUN_ID: run.info.run_id}.items():
                if key != lineage.ARTIFACT_DIGEST:
                    self._client.set_model_version_tag(self.model_name, str(version), key, value)
        self.set_version_tag(version, lineage.ARTIFACT_DIGEST, self.artifact_digest(version))
        return version

    def artifact_digest(self, version: int) -> str:
        """The digest of the version's model artifact as it is stored now."""
        with tempfile.TemporaryDirectory(prefix="prodguard-model-") as tmp:
            return directory_digest(self._download_model(version, Path(tmp)))

    def _download_model(self, version: int, into: Path) -> Path:
        """The version's artifact directory exactly as stored (MLflow's ``models:/`` download
        adds a ``registered_model_meta`` file of its own: read the storage location instead)."""
        with _wrapped(f"downloading model version {version}"):
            uri = self._client.get_model_version_download_uri(self.model_name, str(version))
            return Path(
                self._mlflow.artifacts.download_artifacts(
                    artifact_uri=uri, dst_path=str(into), tracking_uri=self.config.tracking_uri
                )
            )

    def load_json_artifact(self, version: int, name: str) -> Any:
        """An artifact of the version's prodguard run (training or adoption run)."""
        return json.loads(self.load_bytes_artifact(version, name).decode("utf-8"))

    def load_bytes_artifact(self, version: int, name: str, run_id: str | None = None) -> bytes:
        """A binary artifact of the version's prodguard run, as stored (``run_id``: that run,
        when the caller has read it from the version's tags: one registry read less)."""
        if run_id is None:
            info = self.version(version)
            run_id = info.tags.get(lineage.RUN_ID) or info.run_id
        with (
            _wrapped(f"reading artifact {name} of version {version}"),
            tempfile.TemporaryDirectory() as tmp,
        ):
            path = self._mlflow.artifacts.download_artifacts(
                run_id=run_id,
                artifact_path=name,
                dst_path=tmp,
                tracking_uri=self.config.tracking_uri,
            )
            return Path(path).read_bytes()

    # ---- writes --------------------------------------------------------------------------

    def log_bytes_artifact(self, version: int, name: str, data: bytes) -> None:
        """Store ``data`` as artifact ``name`` of the version's prodguard run (replacing it)."""
        info = self.version(version)
        run_id = info.tags.get(lineage.RUN_ID) or info.run_id
        with (
            _wrapped(f"writing artifact {name} of version {version}"),
            tempfile.TemporaryDirectory() as tmp,
        ):
            path = Path(tmp) / name
            path.write_bytes(data)
            self._client.log_artifact(run_id, str(path))

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
            predict = getattr(model, "predict_proba", None) or model.predict  # regressors: values
            signature = infer_signature(input_example, predict(input_example))
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
                if key != lineage.ARTIFACT_DIGEST:  # a copied version's digest is its own
                    self._client.set_model_version_tag(self.model_name, str(version), key, value)
            self._client.set_model_version_tag(
                self.model_name, str(version), lineage.RUN_ID, run.info.run_id
            )
        # the digest of what the artifact store holds, read back after registration
        self.set_version_tag(version, lineage.ARTIFACT_DIGEST, self.artifact_digest(version))
        return version

    def set_alias(self, alias: str, version: int) -> None:
        with _wrapped(f"setting alias {alias}"):
            self._client.set_registered_model_alias(self.model_name, alias, str(version))

    def delete_alias(self, alias: str) -> None:
        with _wrapped(f"removing alias {alias}"):
            self._client.delete_registered_model_alias(self.model_name, alias)

    def log_json_artifact(self, version: int, name: str, document: Any) -> None:
        """Store ``document`` as artifact ``name`` of the version's prodguard run (replacing it)."""
        info = self.version(version)
        run_id = info.tags.get(lineage.RUN_ID) or info.run_id
        with _wrapped(f"writing artifact {name} of version {version}"):
            self._client.log_dict(run_id, document, name)

    def set_version_tag(self, version: int, key: str, value: str) -> None:
        with _wrapped(f"tagging version {version}"):
            self._client.set_model_version_tag(self.model_name, str(version), key, value)

    def delete_version_tag(self, version: int, key: str) -> None:
        with _wrapped(f"untagging version {version}"):
            self._client.delete_model_version_tag(self.model_name, str(version), key)

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


def directory_digest(root: Path) -> str:
    """sha256 over every file under ``root``: one line ``<sha256 of the file> <relative POSIX
    path>`` per file, sorted by path, hashed. Renamed, added, removed or changed files all
    change it; nothing is excluded."""
    lines = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        content = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                content.update(chunk)
        lines.append(f"{content.hexdigest()} {path.relative_to(root).as_posix()}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


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
        raise RegistryUnavailable(
            f"the MLflow store {redact(uri)} is not reachable "
            f"({first_line(getattr(exc, 'orig', exc), 200)}); start it or fix "
            "tracking_uri in the registry config"
        ) from None
    finally:
        engine.dispose()


def _make_sqlite_parent(uri: str) -> None:
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
