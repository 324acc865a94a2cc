"""The served model's fast path: its tree ensemble compiled by treelite, scored by treelite's
GTIL on numpy rows on one thread (the only module that imports treelite); batches of
``ESTIMATOR_ROWS`` rows or more go to the model's own estimator on the same encoded matrix
(scikit-learn's compiled predictors: ~11 ms for 1,000 rows of the example's 250 trees against
GTIL's ~25 ms, but a 3-4 ms fixed cost per call that GTIL does not have).

A model converts when it is a scikit-learn tree ensemble treelite imports (HistGradientBoosting,
RandomForest, ExtraTrees, GradientBoosting; classifier or regressor), alone or as the last step
of a Pipeline whose only other step is a ColumnTransformer of OrdinalEncoders and passthroughs.
The encoders become a dict lookup built from their own ``transform`` of their ``categories_``
(unknown -> NaN, infrequent and missing as the encoder maps them), so categorical splits
and ``unknown_value=NaN`` survive. Anything else (a custom pyfunc, other transformers) is served
by the model itself, with the reason. :func:`compile_model` also checks parity on the frame it
is given: max |fast - model| over the raw outputs must be <= ``PARITY``.

skl2onnx 1.20 was measured too and refused: it cannot convert scikit-learn 1.9's
HistGradientBoosting (node ids of type uint32 break ``make_node``), categorical or not.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from importlib import metadata
from typing import Any

import numpy as np

PARITY = 1e-6
ESTIMATOR_ROWS = 400  # from this batch size on, the estimator itself scores the encoded matrix
ENSEMBLES = (
    "HistGradientBoostingClassifier",
    "HistGradientBoostingRegressor",
    "RandomForestClassifier",
    "RandomForestRegressor",
    "ExtraTreesClassifier",
    "ExtraTreesRegressor",
    "GradientBoostingClassifier",
    "GradientBoostingRegressor",
)


class Unsupported(Exception):
    """The model has a piece the fast path does not convert (the message says which)."""


@dataclass(frozen=True)
class Encoding:
    """Contract-order rows -> the estimator's input matrix: categoricals through the fitted
    encoder's lookup (NaN when missing or unknown), numerics as floats."""

    columns: tuple[str, ...]  # the model's input contract order
    lookups: dict[int, dict[Any, float]]  # contract index -> category -> ordinal code
    order: np.ndarray  # the estimator's column j is contract column order[j]

    def contract_matrix(self, frame: Any) -> np.ndarray:
        """A (n, len(columns)) float matrix in contract order from ``LoadedModel.frame``."""
        out = np.empty((len(frame), len(self.columns)), dtype="float64")
        for index, column in enumerate(self.columns):
            values = frame[column].to_numpy()
            lookup = self.lookups.get(index)
            if lookup is None:
                out[:, index] = values
            else:
                out[:, index] = [lookup.get(v, np.nan) for v in values]
        return out

    def matrix(self, values: Sequence[Sequence[Any]]) -> np.ndarray:
        """The estimator's input matrix (n, k) from contract-order lists of values as
        ``LoadedModel.inputs_of`` gives them (categoricals None when missing, numerics floats):
        ``contract_matrix`` of their frame, in the estimator's column order, without pandas."""
        picked = [
            values[index] if lookup is None else [lookup.get(v, math.nan) for v in values[index]]
            for index, lookup in self._steps
        ]
        return np.array(picked, dtype="float64").T

    @functools.cached_property
    def _steps(self) -> tuple[tuple[int, dict[Any, float] | None], ...]:
        """Each estimator column's contract index and its lookup (None: a number)."""
        return tuple((int(index), self.lookups.get(int(index))) for index in self.order)


@dataclass(frozen=True)
class TreeliteScorer:
    """``raw(frame)`` as ``tasks.Scorer``; ``raw_matrix(x)`` on a contract-order float matrix
    (categoricals already encoded): probabilities (n, k) for classifiers, values (n,) else."""

    model: Any  # treelite.Model
    encoding: Encoding
    classifier: bool
    classes: int
    info: dict[str, Any] = field(default_factory=dict)
    # the model's own estimator, for batches of ESTIMATOR_ROWS or more (None: GTIL always)
    estimator: Any = None

    def raw(self, frame: Any) -> np.ndarray:
        return self.raw_matrix(self.encoding.contract_matrix(frame))

    def raw_columns(self, values: Sequence[Sequence[Any]]) -> np.ndarray:
        """``raw`` of the frame of ``values`` (``models.ColumnScorer``), built without it."""
        return self._estimator_raw(self.encoding.matrix(values))

    def raw_matrix(self, matrix: np.ndarray) -> np.ndarray:
        return self._estimator_raw(matrix[:, self.encoding.order])

    def _estimator_raw(self, x: np.ndarray) -> np.ndarray:
        """The raw output of the estimator-order matrix ``x``: by the estimator itself from
        ``ESTIMATOR_ROWS`` rows on (when it takes a matrix), else by GTIL."""
        if self.estimator is not None and len(x) >= ESTIMATOR_ROWS:
            return self.own_raw(x)
        return self.gtil_raw(x)

    def own_raw(self, x: np.ndarray) -> np.ndarray:
        """The model's own estimator on the estimator-order matrix ``x``."""
        if self.classifier:
            return np.asarray(self.estimator.predict_proba(x), dtype="float64")
        return np.asarray(self.estimator.predict(x), dtype="float64")

    def gtil_raw(self, x: np.ndarray) -> np.ndarray:
        """treelite's GTIL on the estimator-order matrix ``x``, on one thread."""
        from treelite import gtil

        x = np.ascontiguousarray(x, dtype="float64")
        out = np.asarray(gtil.predict(self.model, x, nthread=1), dtype="float64")
        out = out.reshape(len(x), -1)
        if not self.classifier:
            return out[:, 0]
        if self.classes == 2 and out.shape[1] == 1:  # the positive class's probability
            return np.column_stack([1.0 - out[:, 0], out[:, 0]])
        return out


def runtime() -> str:
    return f"treelite {metadata.version('treelite')}"


def compile_model(
    model: Any, columns: tuple[str, ...], evaluation: Any, reference: np.ndarray
) -> TreeliteScorer:
    """The fast scorer of ``model`` whose raw output on ``evaluation`` (a frame as
    ``LoadedModel.frame`` builds it) is within ``PARITY`` of ``reference`` (the model's own raw
    output there). Unsupported when the model does not convert or parity fails."""
    scorer = convert(model, columns)
    gap = parity(scorer, evaluation, reference)
    if not gap <= PARITY:
        raise Unsupported(f"parity {gap:.3g} > {PARITY:g} on {len(evaluation)} rows")
    info = {"runtime": runtime(), "parity_max_abs": gap, "parity_rows": len(evaluation)}
    return replace(scorer, info=info)


def convert(model: Any, columns: tuple[str, ...]) -> TreeliteScorer:
    """The fast scorer of ``model``, parity not checked (the caller's: :func:`parity`);
    Unsupported when it does not convert."""
    estimator, encoding = _structure(model, columns)
    import treelite.sklearn

    try:
        compiled = treelite.sklearn.import_model(estimator)
    except Exception as exc:  # noqa: BLE001 - treelite refuses what it does not import
        raise Unsupported(f"treelite cannot import it ({type(exc).__name__}: {exc})") from None
    return _scorer(compiled, estimator, encoding)


def _scorer(compiled: Any, estimator: Any, encoding: Encoding) -> TreeliteScorer:
    classifier = hasattr(estimator, "classes_")
    classes = len(estimator.classes_) if classifier else 0
    # an estimator fitted on named columns would warn on a bare matrix: GTIL at every size
    own = None if hasattr(estimator, "feature_names_in_") else estimator
    return TreeliteScorer(compiled, encoding, classifier, classes, {"runtime": runtime()}, own)


def parity(scorer: TreeliteScorer, frame: Any, reference: np.ndarray) -> float:
    """max |fast - model| over the raw outputs on ``frame``, of both of the scorer's paths
    (GTIL, and the estimator on the encoded matrix when it has one); Unsupported when the
    shapes differ."""
    expected = np.asarray(reference, dtype="float64")
    matrix = scorer.encoding.contract_matrix(frame)[:, scorer.encoding.order]
    paths = [scorer.gtil_raw(matrix)]
    if scorer.estimator is not None:
        paths.append(scorer.own_raw(matrix))
    gap = 0.0
    for fast in paths:
        if fast.shape != expected.shape:
            raise Unsupported(
                f"output shape {fast.shape} differs from the model's {expected.shape}"
            )
        if expected.size:
            gap = max(gap, float(np.max(np.abs(fast - expected))))
    return gap


def to_bytes(scorer: TreeliteScorer) -> bytes:
    """The compiled ensemble in treelite's own serialisation (``Model.serialize_bytes``); the
    encoding is not in it: :func:`from_bytes` rebuilds it from the model's own encoder."""
    return bytes(scorer.model.serialize_bytes())


def from_bytes(model: Any, columns: tuple[str, ...], data: bytes) -> TreeliteScorer:
    """The scorer of ``model`` whose ensemble is ``data`` (:func:`to_bytes`), the encoding read
    from ``model``'s encoder; Unsupported when the model's structure does not convert or the
    bytes are not a treelite model of its shape (parity is the caller's check)."""
    import treelite

    estimator, encoding = _structure(model, columns)
    try:
        compiled = treelite.Model.deserialize_bytes(data)
    except Exception as exc:  # noqa: BLE001 - treelite's own error on foreign bytes
        raise Unsupported(f"treelite cannot read it ({type(exc).__name__})") from None
    if compiled.num_feature != len(encoding.order):
        raise Unsupported(
            f"it reads {compiled.num_feature} features, the model {len(encoding.order)}"
        )
    return _scorer(compiled, estimator, encoding)


def _structure(model: Any, columns: tuple[str, ...]) -> tuple[Any, Encoding]:
    """The tree ensemble of ``model`` and the encoding of its input; Unsupported if neither."""
    steps = list(getattr(model, "steps", [("model", model)]))
    estimator = steps[-1][1]
    if type(estimator).__name__ not in ENSEMBLES:
        raise Unsupported(f"{type(estimator).__name__} is not a tree ensemble treelite imports")
    if len(steps) > 2:
        raise Unsupported("a pipeline of more than one transformer before the estimator")
    encoding = (
        _encoding(steps[0][1], columns)
        if len(steps) == 2
        else Encoding(columns, {}, np.arange(len(columns)))
    )
    return estimator, encoding


def _encoding(transformer: Any, columns: tuple[str, ...]) -> Encoding:
    if type(transformer).__name__ != "ColumnTransformer":
        raise Unsupported(f"{type(transformer).__name__} before the estimator")
    position = {name: i for i, name in enumerate(columns)}
    order: list[int] = []
    lookups: dict[int, dict[Any, float]] = {}
    for _, step, selected in transformer.transformers_:
        names = [columns[c] if isinstance(c, (int, np.integer)) else c for c in selected]
        if step == "drop" or not names:
            continue
        if any(n not in position for n in names):
            raise Unsupported("the encoder reads columns outside the model's input contract")
        if step == "passthrough" or _identity(step):
            order += [position[n] for n in names]
        elif type(step).__name__ == "OrdinalEncoder":
            for name, codes in zip(names, _codes(step, names), strict=True):
                lookups[position[name]] = codes
                order.append(position[name])
        else:
            raise Unsupported(f"{type(step).__name__} in the column transformer")
    return Encoding(columns, lookups, np.asarray(order, dtype=np.intp))


def _codes(encoder: Any, names: list[str]) -> list[dict[Any, float]]:
    """Each column's category -> code, read from the fitted encoder's own transform of its
    categories and of a missing value (None, as ``LoadedModel.frame`` gives it): infrequent
    bins and missing values map exactly as the encoder maps them (a missing value seen in
    training may share the infrequent bin, not NaN)."""
    import pandas as pd

    categories = [[v for v in c if not _missing(v)] + [None] for c in encoder.categories_]
    size = max(len(c) for c in categories)
    frame = pd.DataFrame(
        {
            name: pd.Series(c + [c[0]] * (size - len(c)), dtype=object)
            for name, c in zip(names, categories, strict=True)
        }
    )
    encoded = np.asarray(encoder.transform(frame), dtype="float64")
    return [
        {v: float(encoded[i, j]) for i, v in enumerate(values)}
        for j, values in enumerate(categories)
    ]


def _identity(step: Any) -> bool:
    """A fitted ``passthrough`` (scikit-learn keeps it as an identity FunctionTransformer)."""
    return type(step).__name__ == "FunctionTransformer" and step.func is None


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def probe_rows(
    fallbacks: dict[str, Any], categories: dict[str, frozenset[str]]
) -> list[dict[str, Any]]:
    """Rows that visit every known category of every categorical, a missing and an unknown
    one, and each feature missing: what serving checks parity on when it loads a version."""
    rows = [dict(fallbacks)]
    for column, known in categories.items():
        rows += [{**fallbacks, column: value} for value in sorted(known)]
        rows += [{**fallbacks, column: "\x00unknown"}]
    rows += [{**fallbacks, column: None} for column in fallbacks]
    return rows


def fast_scorer(loaded: Any) -> tuple[TreeliteScorer | None, str]:
    """The compiled scorer of a ``LoadedModel`` with parity on its probe rows, or None and why
    the model serves itself."""
    from prodguard.tasks import ModelScorer

    flavor = getattr(loaded.pipeline, "flavor", "sklearn")
    if flavor != "sklearn":
        return None, f"served through its MLflow {flavor} flavor"
    frame = loaded.frame(probe_rows(loaded.fallbacks, loaded.categories))
    reference = ModelScorer(loaded.pipeline, loaded.spec.task).raw(frame)
    try:
        scorer = compile_model(loaded.pipeline, loaded.columns, frame, reference)
    except Unsupported as exc:
        return None, str(exc)
    return scorer, f"{scorer.info['runtime']}, parity {scorer.info['parity_max_abs']:.2g}"
