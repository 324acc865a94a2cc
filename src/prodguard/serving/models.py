"""Loading a registered version for serving, verified, and following the aliases (hot swap).

A version is served only if its recorded input contract equals the current feature service and
it loads and scores a row built from its own fallbacks. The follower re-reads the aliases every
``poll_seconds``; a version that fails verification is refused (an alert is sent) and the
current one keeps serving. Requests take one immutable ``ServingState`` snapshot, so a swap
never mixes versions within a request.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from prodguard.alerts import Alert, Alerter
from prodguard.clock import Clock, SystemClock
from prodguard.contracts.row_checks import is_null
from prodguard.digests import document_digest
from prodguard.errors import (
    ArtifactIntegrityError,
    ProdguardError,
    PromotionRefused,
    RegistryUnavailable,
    ServiceNotReady,
)
from prodguard.registry.lineage import REFERENCE_STATS_JSON, Lineage
from prodguard.registry.ports import Classifier, VersionReader
from prodguard.rollout.policy import TrafficPolicy
from prodguard.tasks import (
    ModelScorer,
    Outputs,
    Scorer,
    Task,
    TaskSpec,
    check_model,
    check_output,
    normalise,
    spec_from_tags,
)

_log = logging.getLogger("prodguard.serving")
PARALLEL_ROWS = 256


@functools.cache
def _threads() -> Any:
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@runtime_checkable
class ColumnScorer(Protocol):
    """A scorer that also reads the model input as ``LoadedModel.inputs_of`` gives it (lists
    in contract order), with the same raw output as ``raw`` of the frame of those values."""

    def raw(self, frame: Any) -> np.ndarray: ...

    def raw_columns(self, values: Sequence[Sequence[Any]]) -> np.ndarray: ...


@dataclass(frozen=True)
class LoadedModel:
    version: int
    pipeline: Classifier
    columns: tuple[str, ...]
    categorical: frozenset[str]
    fallbacks: dict[str, Any]
    categories: dict[str, frozenset[str]]
    spec: TaskSpec = TaskSpec(Task.BINARY, (0, 1))
    scorer: Scorer | None = None  # a compiled fast path; default: the pipeline itself
    scoring: str = ""  # how it is scored: the fast path with its parity, or why not

    @functools.cached_property
    def _scorer(self) -> Scorer:
        return self.scorer or ModelScorer(self.pipeline, self.spec.task)

    def frame(self, rows: list[dict[str, Any]]) -> pd.DataFrame:
        """Model input in contract order: categoricals as objects (None when missing, as the
        encoder was fitted: ``training.model.prepare``), numerics as floats (NaN when missing or
        not a number). Built column by column: a DataFrame of dicts costs milliseconds."""
        absent = [c for c in self.columns if rows and c not in rows[0]]
        if absent:
            raise ServiceNotReady(
                f"v{self.version} needs features this service does not provide: {absent}"
            )
        return self.frame_of({c: [row.get(c) for row in rows] for c in self.columns}, len(rows))

    def frame_of(self, columns: Mapping[str, Sequence[Any]], rows: int) -> pd.DataFrame:
        """``frame`` of ``rows`` rows given as columns (each at least ``rows`` long)."""
        data: dict[str, np.ndarray] = {
            column: np.array(values, dtype=object if column in self.categorical else "float64")
            for column, values in zip(self.columns, self.inputs_of(columns, rows), strict=True)
        }
        return pd.DataFrame(data, copy=False)  # the arrays are its own: no copy

    def inputs_of(self, columns: Mapping[str, Sequence[Any]], rows: int) -> list[list[Any]]:
        """The values of ``frame_of``'s columns, in contract order, as lists: categoricals as
        they are (None when missing), numerics as floats (NaN when missing or not a number)."""
        absent = [c for c in self.columns if rows and c not in columns]
        if absent:
            raise ServiceNotReady(
                f"v{self.version} needs features this service does not provide: {absent}"
            )
        out: list[list[Any]] = []
        for column in self.columns:
            values = columns[column][:rows] if rows else ()
            kinds = set(map(type, values))
            if column in self.categorical:
                if kinds <= _TEXT:  # as they are (None stays None)
                    out.append(list(values))
                else:
                    out.append([None if is_null(v) else v for v in values])
            elif kinds <= _FLOAT:
                out.append(list(values))
            elif kinds <= _PLAIN_NUMBER:
                out.append([math.nan if v is None else float(v) for v in values])
            else:
                out.append([_number(v) for v in values])
        return out

    def raw(self, frame: pd.DataFrame) -> np.ndarray:
        """The scorer's raw output: class probabilities (n, k) or values (n,). Small batches of
        the model itself run on one OpenMP thread: per-tree parallel regions cost more than they
        save on a few rows (and wreck the p99); a compiled scorer sets its own threads."""
        if len(frame) >= PARALLEL_ROWS or not isinstance(self._scorer, ModelScorer):
            return self._scorer.raw(frame)  # a compiled scorer sets its own threads
        with _threads().limit(limits=1, user_api="openmp"):
            return self._scorer.raw(frame)

    def predict(self, frame: pd.DataFrame, threshold: float | None = None) -> Outputs:
        """The normalised outputs (``prodguard.tasks``); ``threshold``: the binary decision
        threshold in force (default: the version's)."""
        spec = self.spec if threshold is None else replace(self.spec, threshold=threshold)
        interval = None
        if spec.task is Task.REGRESSION and isinstance(self._scorer, ModelScorer):
            interval = self._scorer.interval(frame)
        return normalise(spec, self.raw(frame), interval)

    def predict_columns(
        self, columns: Mapping[str, Sequence[Any]], rows: int, threshold: float | None = None
    ) -> Outputs:
        """``predict(frame_of(columns, rows), threshold)``; a scorer that reads columns (the
        fast path: ``ColumnScorer``) gets ``inputs_of`` them instead of a DataFrame."""
        read = self._column_scorer
        if read is None:
            return self.predict(self.frame_of(columns, rows), threshold)
        spec = self.spec if threshold is None else replace(self.spec, threshold=threshold)
        return normalise(spec, read(self.inputs_of(columns, rows)))

    @functools.cached_property
    def _column_scorer(self) -> Callable[[list[list[Any]]], np.ndarray] | None:
        scorer = self._scorer
        return scorer.raw_columns if isinstance(scorer, ColumnScorer) else None

    def score(self, frame: pd.DataFrame) -> list[float]:
        """Each row's score: P(positive), the value, or the predicted class's probability."""
        return [float(v) for v in self.predict(frame).score]


_TEXT = frozenset({str, type(None)})
_FLOAT = frozenset({float})
_PLAIN_NUMBER = frozenset({float, int, type(None)})


def _number(value: Any) -> float:
    """``pd.to_numeric(errors="coerce")`` of one value as a float, fast for plain numbers."""
    kind = type(value)
    if kind is float or kind is int:
        return float(value)
    if value is None:
        return math.nan
    if isinstance(value, (int, float, np.number)) and not isinstance(value, np.datetime64):
        return float(value)
    return float(pd.to_numeric(pd.Series([value], dtype=object), errors="coerce").iloc[0])


@dataclass(frozen=True)
class ServingState:
    champion: LoadedModel | None = None
    standby: LoadedModel | None = None
    rollout: LoadedModel | None = None  # the version in canary or shadow traffic
    policy: TrafficPolicy = TrafficPolicy()

    def describe(self) -> dict[str, Any]:
        served: dict[str, Any] = {
            "champion": self.champion.version if self.champion else None,
            "standby": self.standby.version if self.standby else None,
        }
        if self.rollout is not None:
            served["rollout"] = self.rollout.version
            served["traffic"] = self.policy.describe()
        return served


def contract_difference(recorded: Sequence[Sequence[str]], current: Sequence[Sequence[str]]) -> str:
    """'' when equal, else what differs: missing, extra and retyped features."""
    old = {pair[0]: pair[1] for pair in recorded}
    new = {pair[0]: pair[1] for pair in current}
    parts = [f"missing {k}" for k in new if k not in old]
    parts += [f"no longer served {k}" for k in old if k not in new]
    parts += [f"{k} is {new[k]}, was {old[k]}" for k in old if k in new and old[k] != new[k]]
    return "; ".join(parts)


ScorerChoice = Callable[[LoadedModel, Lineage], tuple[Scorer | None, str]]


def categories_of(stats: Mapping[str, Any]) -> dict[str, frozenset[str]]:
    """The known categories of each categorical feature in a version's reference statistics."""
    return {
        name: frozenset(s.get("categories", {}))
        for name, s in stats.items()
        if s.get("kind") == "categorical"
    }


def load_checked(
    registry: VersionReader,
    store_features: Sequence[Sequence[str]],
    version: int,
    choose: ScorerChoice | None = None,
) -> LoadedModel:
    """Load ``version`` if its contract matches ``store_features``, its stored artifact matches
    the digest recorded at registration (the registry loads only from the verified copy:
    ``MlflowRegistry.load_model``), its reference statistics match theirs, and it scores a row
    with the output its recorded task (``prodguard.task``) declares; ``choose`` picks the scorer
    it serves with (``serving.fast_path.load_verified``; None: the model itself).

    PromotionRefused (ArtifactIntegrityError for a tampered or digest-less artifact) when the
    version itself is at fault; RegistryUnavailable, untouched, when the registry could not be
    reached — the caller retries later instead of refusing a good version for good."""
    tags = registry.version(version).tags
    lineage = Lineage.from_tags(tags)
    if lineage is None:
        raise PromotionRefused(
            f"v{version} has no prodguard lineage; bring a model trained elsewhere in with "
            f"`prodguard adopt --model-uri models:/NAME/{version}` (or use `prodguard train`)"
        )
    problem = contract_difference(lineage.store_features, store_features)
    if problem:
        raise PromotionRefused(
            f"v{version}'s input contract does not match the feature service: {problem}"
        )
    try:
        fallbacks = lineage.fallbacks
        stats = registry.load_json_artifact(version, REFERENCE_STATS_JSON)
        stats_digest = lineage.reference_stats_digest
        if stats_digest is not None and document_digest(stats) != stats_digest:
            raise ArtifactIntegrityError(
                f"v{version}'s {REFERENCE_STATS_JSON} does not match the digest recorded at "
                "registration: it was modified in the artifact store and is not used; restore "
                "it or register the model again"
            )
        spec = spec_from_tags(tags)
        loaded = LoadedModel(
            version=version,
            pipeline=registry.load_model(version),
            columns=lineage.columns,
            categorical=lineage.categorical,
            fallbacks=fallbacks,
            categories=categories_of(stats),
            spec=spec,
        )
        problem = check_model(loaded.pipeline, spec.task) or check_output(
            spec, loaded.raw(loaded.frame([fallbacks]))
        )
        if problem:
            raise PromotionRefused(f"v{version} cannot be served: {problem}")
        if choose is not None:
            scorer, how = choose(loaded, lineage)
            _log.info("v%s scored by %s", version, how)
            loaded = replace(loaded, scorer=scorer, scoring=how)
    except (PromotionRefused, RegistryUnavailable):
        raise
    except Exception as exc:  # noqa: BLE001 - any other failure to load or score refuses
        raise PromotionRefused(
            f"v{version} fails to load or score one row ({type(exc).__name__}); "
            "it cannot be served or promoted"
        ) from None
    return loaded


class ModelFollower:
    """Keeps a ServingState that follows the registry's champion and standby aliases and the
    traffic policy's rollout version."""

    def __init__(
        self,
        targets: Callable[[], tuple[dict[str, int | None], TrafficPolicy]],
        load: Callable[[int], LoadedModel],
        alerter: Alerter,
        poll_seconds: float,
        clock: Clock | None = None,
        on_swap: Callable[[ServingState], None] | None = None,
    ) -> None:
        self._targets = targets
        self._on_swap = on_swap
        self._load = load
        self._alerter = alerter
        self._poll_seconds = poll_seconds
        self._clock = clock or SystemClock()
        self._state = ServingState()
        self._wanted: dict[str, int | None] = {}
        self._refused: set[int] = set()
        self._retrying: set[int] = set()  # versions whose load failed on the registry
        self._unreachable_since: float | None = None  # monotonic time of the first failed poll
        self._failed_polls = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.swaps = 0

    @property
    def state(self) -> ServingState:
        return self._state

    @property
    def standby_unset(self) -> bool:
        return self._wanted.get("standby") is None

    @property
    def standby_refused(self) -> bool:
        return self._wanted.get("standby") in self._refused

    def refresh(self) -> bool:
        """Re-read the aliases and the traffic policy and swap what moved; True when the served
        state changed."""
        aliases, policy = self._targets()
        wanted = {**aliases, "rollout": policy.version if policy.active else None}
        self._wanted = wanted
        current = self._state
        loaded_now = (current.champion, current.standby, current.rollout)
        updated: dict[str, LoadedModel | None] = {}
        for role in ("champion", "standby", "rollout"):
            version = wanted.get(role)
            loaded: LoadedModel | None = getattr(current, role)
            if version is None:
                updated[role] = loaded if role == "champion" else None
                continue
            if loaded is not None and loaded.version == version:
                updated[role] = loaded
                continue
            reuse = next((m for m in loaded_now if m and m.version == version), None)
            updated[role] = reuse or self._try_load(role, version, loaded)
        rollout = updated["rollout"]
        if rollout is not None and rollout.version != wanted["rollout"]:
            rollout = None  # a refused rollout version is not replaced by the previous one
        state = ServingState(
            champion=updated["champion"],
            standby=updated["standby"],
            rollout=rollout,
            policy=policy if rollout is not None else TrafficPolicy(),
        )
        if state.describe() == current.describe():
            return False
        self._state = state
        self.swaps += 1
        _log.info("serving %s", state.describe())
        if self._on_swap is not None:
            self._on_swap(state)
        return True

    def _try_load(self, role: str, version: int, keep: LoadedModel | None) -> LoadedModel | None:
        if version in self._refused:
            return keep
        try:
            loaded = self._load(version)
        except PromotionRefused as exc:
            self._refused.add(version)
            self._alerter.send(
                Alert(
                    type="model_refused",
                    severity="critical",
                    source="serving",
                    message=f"{role} v{version} refused, still serving the previous one: {exc}",
                    time=self._clock.now(),
                    details={"role": role, "version": version},
                )
            )
            return keep
        except ProdguardError as exc:  # registry unreachable etc.: retry at the next poll
            if version not in self._retrying:  # said once, not at every poll
                self._retrying.add(version)
                _log.warning("loading %s v%s failed, retrying every poll: %s", role, version, exc)
            return keep
        self._retrying.discard(version)
        return loaded

    def start(self) -> None:
        self.refresh()
        self._thread = threading.Thread(target=self._loop, name="prodguard-follower", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._poll_seconds):
            self.poll()

    def poll(self) -> None:
        """One refresh that never raises: while the registry cannot be read the loaded models
        keep serving; the first failed poll logs and alerts (``registry_unreachable``), the
        following ones are counted, and the first good one logs the recovery."""
        try:
            self.refresh()
        except Exception as exc:  # noqa: BLE001 - keep serving; the next poll retries
            self._failed_polls += 1
            if self._unreachable_since is not None:
                return
            self._unreachable_since = time.monotonic()
            served = self._state.describe()
            _log.warning("alias poll failed, still serving %s; retrying: %s", served, exc)
            self._alerter.send(
                Alert(
                    type="registry_unreachable",
                    severity="warning",
                    source="serving",
                    message=(
                        f"cannot read the aliases ({exc}); still serving {served}, retrying "
                        f"every {self._poll_seconds:g} s"
                    ),
                    time=self._clock.now(),
                    details={"served": served},
                )
            )
            return
        if self._unreachable_since is not None:
            _log.warning(
                "registry readable again after %.1f s (%d failed polls); serving %s",
                time.monotonic() - self._unreachable_since,
                self._failed_polls,
                self._state.describe(),
            )
            self._unreachable_since = None
            self._failed_polls = 0

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
