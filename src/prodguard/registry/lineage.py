"""The registry lineage contract: every ``prodguard.*`` tag and artifact name, in one place.

``prodguard train`` writes a version's lineage as tags (windows, row counts, digests, the feature
service and its contract, fallbacks, evaluation metrics) and as JSON artifacts (reference
statistics, calibration, lineage); later steps add tags (artifact digest, baseline, drill,
demotion, fault). Nothing else spells these names: the writers use the constants, the readers
parse a version's tags with ``Lineage.from_tags`` into a typed, frozen object.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from prodguard.errors import PromotionRefused

PREFIX = "prodguard."

# ---- version tags written at registration (``prodguard train``) ---------------------------------
TRAIN_WINDOW = PREFIX + "train_window"
EVAL_WINDOW = PREFIX + "eval_window"
ROWS_TRAIN = PREFIX + "rows_train"
ROWS_EVAL = PREFIX + "rows_eval"
ROWS_UNLABELLED = PREFIX + "rows_unlabelled"
DATASET_DIGEST = PREFIX + "dataset_digest"
FEATURE_SERVICE = PREFIX + "feature_service"
FEATURE_VIEWS = PREFIX + "feature_views"
STORE_FEATURES = PREFIX + "store_features"
INPUT_CONTRACT = PREFIX + "input_contract"
SUITE_DIGESTS = PREFIX + "suite_digests"
CODE_VERSION = PREFIX + "code_version"
SEED = PREFIX + "seed"
REFERENCE_STATS_DIGEST = PREFIX + "reference_stats_digest"
FALLBACKS = PREFIX + "fallbacks"
EVAL_PREFIX = PREFIX + "eval."  # + metric name: held-out evaluation metrics
RUN_ID = PREFIX + "run_id"
ARTIFACT_DIGEST = PREFIX + "artifact_sha256"
ADOPTED_FROM = PREFIX + "adopted_from"  # the MLflow URI of a model adopted (`prodguard adopt`)
TASK = PREFIX + "task"  # binary | multiclass | regression (absent: binary, registered earlier)
CLASSES = PREFIX + "classes"  # JSON list of a classifier's labels, in its probability columns
POSITIVE_CLASS = PREFIX + "positive_class"  # JSON: binary, when model.positive_class names it
# the fast scoring path (``serving.fast_path``), recorded right after registration or adoption:
FAST_PATH = PREFIX + "fast_path"  # "treelite <version>" or "unsupported: <reason>"
FAST_PATH_DIGEST = PREFIX + "fast_path_sha256"  # sha256 of the FAST_PATH_ARTIFACT bytes
FAST_PATH_PARITY = PREFIX + "fast_path_parity"  # max |fast - model| on the evaluation rows
FAST_PATH_ROWS = PREFIX + "fast_path_rows"  # how many rows that parity was measured on
FAST_PATH_UNSUPPORTED = "unsupported: "  # FAST_PATH's prefix when the model serves itself

# ---- version tags written later ----------------------------------------------------------------
BASELINE = PREFIX + "baseline"  # "<start>/<end>" of the staging baseline (artifact BASELINE_JSON)
DRILL = PREFIX + "drill"  # JSON record of the last rollback drill
FAULT = PREFIX + "fault"  # a deliberately faulty copy (drills, guard tests)
DEMOTED_REASON = PREFIX + "demoted_reason"
DEMOTED_AT = PREFIX + "demoted_at"

# ---- registered-model tags ---------------------------------------------------------------------
TRAFFIC = PREFIX + "traffic"  # the traffic policy (canary / shadow) as JSON

# ---- artifacts -----------------------------------------------------------------------------------
REFERENCE_STATS_JSON = "reference_stats.json"
CALIBRATION_JSON = "calibration.json"
LINEAGE_JSON = "lineage.json"
BASELINE_JSON = "baseline.json"
FAST_PATH_ARTIFACT = "fast_path.treelite"  # the compiled ensemble (treelite's serialisation)

# A faulty copy of a version keeps its lineage, contract and baseline, never the base's run,
# drill or demotion; its artifact digest is computed on its own registration.
COPIED_ARTIFACTS = (REFERENCE_STATS_JSON, LINEAGE_JSON, BASELINE_JSON)
# Nor its fast path: a faulty copy's model is not the base's ensemble.
NOT_COPIED = frozenset(
    {
        RUN_ID,
        DRILL,
        DEMOTED_REASON,
        DEMOTED_AT,
        ARTIFACT_DIGEST,
        FAST_PATH,
        FAST_PATH_DIGEST,
        FAST_PATH_PARITY,
        FAST_PATH_ROWS,
    }
)

# What `prodguard status` shows of each version, in this order.
SUMMARY_KEYS = (
    "task",
    "classes",
    "train_window",
    "eval_window",
    "rows_train",
    "rows_eval",
    "rows_unlabelled",
    "dataset_digest",
    "feature_service",
    "feature_views",
    "suite_digests",
    "code_version",
    "demoted_reason",
    "baseline",
)
_JSON_SUMMARY = frozenset({"feature_views", "suite_digests", "classes"})

# The held-out metric that sums a version up, per task (`status`, `promote`), and the metrics
# where lower is better.
HEADLINE_METRICS = {"binary": "auc", "multiclass": "macro_f1", "regression": "rmse"}
LOWER_IS_BETTER = frozenset({"rmse", "mae", "log_loss", "ece"})

Contract = tuple[tuple[str, str], ...]  # (feature name, kind) pairs, in order


def registration_tags(lineage: Mapping[str, str], metrics: Mapping[str, float]) -> dict[str, str]:
    """The tags a new version is registered with: ``lineage`` keys (names without the prefix,
    e.g. ``train_window``) and the evaluation ``metrics``."""
    tags = {PREFIX + key: value for key, value in lineage.items()}
    tags.update({f"{EVAL_PREFIX}{k}": f"{v:.6g}" for k, v in metrics.items()})
    return tags


def is_lineage_tag(key: str) -> bool:
    return key.startswith(PREFIX)


def copied_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """The tags a faulty copy of a version inherits (see ``NOT_COPIED``)."""
    return {k: v for k, v in tags.items() if is_lineage_tag(k) and k not in NOT_COPIED}


def summary(tags: Mapping[str, str]) -> dict[str, Any]:
    """``SUMMARY_KEYS`` read from ``tags`` (None when absent; JSON ones decoded), with every
    held-out metric (``eval``) and the task's headline one (``headline``: metric, value)."""
    found: dict[str, Any] = {}
    for key in SUMMARY_KEYS:
        value: Any = tags.get(PREFIX + key)
        if value is not None and key in _JSON_SUMMARY:
            value = json.loads(value)
        found[key] = value
    found["eval"] = evaluation(tags)
    found["headline"] = headline(tags)
    return found


def evaluation(tags: Mapping[str, str]) -> dict[str, float]:
    """The held-out evaluation metrics a version was registered with (unparseable ones out)."""
    metrics: dict[str, float] = {}
    for key, value in tags.items():
        if key.startswith(EVAL_PREFIX):
            try:
                metrics[key.removeprefix(EVAL_PREFIX)] = float(value)
            except ValueError:
                continue
    return metrics


def headline(tags: Mapping[str, str]) -> dict[str, Any] | None:
    """The version's headline metric (``HEADLINE_METRICS`` of its task), if it was recorded."""
    metric = HEADLINE_METRICS.get(tags.get(TASK, "binary"), "auc")
    value = evaluation(tags).get(metric)
    if value is None:
        return None
    return {"metric": metric, "value": value, "lower_is_better": metric in LOWER_IS_BETTER}


def compare_headlines(
    candidate: Mapping[str, str], champion: Mapping[str, str]
) -> dict[str, Any] | None:
    """The candidate's headline metric beside the champion's (same task and metric), and
    whether it is better. Each was measured on its own evaluation window, so this informs a
    promotion; the rollout guard judges both on the same live traffic."""
    mine, theirs = headline(candidate), headline(champion)
    if mine is None or theirs is None or mine["metric"] != theirs["metric"]:
        return None
    low = mine["lower_is_better"]
    better = mine["value"] < theirs["value"] if low else mine["value"] > theirs["value"]
    return {
        "metric": mine["metric"],
        "candidate": mine["value"],
        "champion": theirs["value"],
        "better": better,
        "same_window": candidate.get(EVAL_WINDOW) == champion.get(EVAL_WINDOW),
    }


def scoring_path(tags: Mapping[str, str]) -> str:
    """How serving scores the version, from its fast-path tags: the compiled ensemble with its
    parity, the model itself with the reason, or the conversion at load (no tag: registered
    before the fast path was recorded, or its recording was interrupted)."""
    if tags.get(FAULT):
        return "the model itself (a faulty copy)"
    recorded = tags.get(FAST_PATH)
    if recorded is None:
        return "converted at load (no fast path recorded)"
    if recorded.startswith(FAST_PATH_UNSUPPORTED):
        return f"the model itself: {recorded.removeprefix(FAST_PATH_UNSUPPORTED)}"
    rows = tags.get(FAST_PATH_ROWS)
    return f"fast path {recorded}, parity {tags.get(FAST_PATH_PARITY, '?')}" + (
        f" on {rows} rows" if rows else ""
    )


def split_window(text: str) -> tuple[datetime, datetime]:
    """``"<start>/<end>"`` (ISO 8601, as written by the window tags) as two datetimes."""
    first, last = text.split("/")
    return datetime.fromisoformat(first), datetime.fromisoformat(last)


def recorded_store_features(tags: Mapping[str, str]) -> Contract | None:
    """The feature-service contract a version was trained against; None when the version was
    not registered through ``prodguard train``."""
    text = tags.get(STORE_FEATURES)
    if text is None:
        return None
    return _contract(text, STORE_FEATURES)


@dataclass(frozen=True)
class Lineage:
    """A version's lineage, parsed from its tags. Optional fields are None when not recorded
    (yet): a baseline, a drill, a demotion, a fault, and tags of older registrations."""

    store_features: Contract
    input_contract: Contract
    fallbacks: dict[str, Any]
    reference_stats_digest: str | None = None
    artifact_digest: str | None = None
    feature_service: str | None = None
    feature_views: dict[str, int | None] = field(default_factory=dict)
    suite_digests: dict[str, list[str]] = field(default_factory=dict)
    train_window: str | None = None
    eval_window: str | None = None
    dataset_digest: str | None = None
    code_version: str | None = None
    run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    baseline: str | None = None
    drill: dict[str, Any] | None = None
    fault: str | None = None
    demoted_reason: str | None = None
    demoted_at: str | None = None
    fast_path: str | None = None
    fast_path_digest: str | None = None
    fast_path_parity: float | None = None
    fast_path_rows: int | None = None

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> Lineage | None:
        """None when ``tags`` hold no prodguard lineage (a version registered by other means);
        PromotionRefused naming the tag when a lineage tag is missing or malformed."""
        store_features = recorded_store_features(tags)
        if store_features is None:
            return None
        metrics: dict[str, float] = {}
        for key, value in tags.items():
            if key.startswith(EVAL_PREFIX):
                metrics[key[len(EVAL_PREFIX) :]] = float(_parse(value, key, float))
        return cls(
            store_features=store_features,
            input_contract=_contract(_required(tags, INPUT_CONTRACT), INPUT_CONTRACT),
            fallbacks=_json_object(_required(tags, FALLBACKS), FALLBACKS),
            reference_stats_digest=tags.get(REFERENCE_STATS_DIGEST),
            artifact_digest=tags.get(ARTIFACT_DIGEST),
            feature_service=tags.get(FEATURE_SERVICE),
            feature_views=_json_object(tags.get(FEATURE_VIEWS, "{}"), FEATURE_VIEWS),
            suite_digests=_json_object(tags.get(SUITE_DIGESTS, "{}"), SUITE_DIGESTS),
            train_window=tags.get(TRAIN_WINDOW),
            eval_window=tags.get(EVAL_WINDOW),
            dataset_digest=tags.get(DATASET_DIGEST),
            code_version=tags.get(CODE_VERSION),
            run_id=tags.get(RUN_ID),
            metrics=metrics,
            baseline=tags.get(BASELINE),
            drill=_json_object(tags[DRILL], DRILL) if tags.get(DRILL) else None,
            fault=tags.get(FAULT),
            demoted_reason=tags.get(DEMOTED_REASON),
            demoted_at=tags.get(DEMOTED_AT),
            fast_path=tags.get(FAST_PATH),
            fast_path_digest=tags.get(FAST_PATH_DIGEST),
            fast_path_parity=(
                float(_parse(tags[FAST_PATH_PARITY], FAST_PATH_PARITY, float))
                if tags.get(FAST_PATH_PARITY)
                else None
            ),
            fast_path_rows=(
                int(_parse(tags[FAST_PATH_ROWS], FAST_PATH_ROWS, int))
                if tags.get(FAST_PATH_ROWS)
                else None
            ),
        )

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.input_contract)

    @property
    def categorical(self) -> frozenset[str]:
        return frozenset(name for name, kind in self.input_contract if kind == "categorical")


def _required(tags: Mapping[str, str], key: str) -> str:
    value = tags.get(key)
    if value is None:
        raise PromotionRefused(
            f"the version's lineage has no {key} tag; register it again with `prodguard train`"
        )
    return value


def _parse(text: str, key: str, parse: Any) -> Any:
    try:
        return parse(text)
    except (ValueError, TypeError):
        raise PromotionRefused(
            f"the version's {key} tag is malformed; register it again with `prodguard train`"
        ) from None


def _json_object(text: str, key: str) -> Any:
    value = _parse(text, key, json.loads)
    if not isinstance(value, dict):
        raise PromotionRefused(
            f"the version's {key} tag is not a JSON object; register it again with "
            "`prodguard train`"
        )
    return value


def _contract(text: str, key: str) -> Contract:
    value = _parse(text, key, json.loads)
    try:
        return tuple((str(name), str(kind)) for name, kind in value)
    except (ValueError, TypeError):
        raise PromotionRefused(
            f"the version's {key} tag is not a list of [name, kind] pairs; register it again "
            "with `prodguard train`"
        ) from None
