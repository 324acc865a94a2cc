"""A version's fast scoring path: compiled once when the version is registered or adopted,
stored beside it, verified and used when it is loaded for serving.

**At registration** (``prodguard train``, ``prodguard adopt``) :func:`record` converts the model
(``serving.treelite_adapter``: a scikit-learn tree ensemble, with its encoder as a lookup) and
checks parity on the version's evaluation rows plus probe rows (every known category, an
unknown and a missing one, each feature missing), scored by the *deserialised* artifact, i.e.
exactly what serving will run: max |fast - model| over the raw outputs (probabilities or
values) must be <= ``treelite_adapter.PARITY`` (1e-6). It stores treelite's serialisation as
the artifact ``FAST_PATH_ARTIFACT`` of the version's run and records its sha256, the parity and
the row count as tags, ``FAST_PATH`` (the runtime) last. A model that does not convert, whose
parity is above 1e-6 or whose conversion fails in any way gets ``FAST_PATH = "unsupported:
<reason>"`` and no artifact; the registration itself is never lost to it.

**At load** (``load_verified``, so the guarded and the bare service alike) :func:`select`
downloads the artifact, checks its sha256 against the tag and its parity on the fallbacks row,
and serves it; a digest mismatch, a missing or unreadable artifact, one that fails to score or a
parity miss serves the model itself, with one warning line naming the reason (the version is not
refused: its model artifact has its own digest, checked before). A version recorded as
unsupported serves itself without another attempt. A version without the tag (registered before
the fast path was recorded, a registration interrupted before its tags, a drill's staging
registry, a faulty copy) is converted at load, as before.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from prodguard.errors import RegistryError, RegistryUnavailable, first_line
from prodguard.registry import lineage as names
from prodguard.registry.lineage import Lineage
from prodguard.registry.ports import BinaryArtifacts, VersionReader
from prodguard.serving.models import LoadedModel, categories_of, load_checked
from prodguard.tasks import ModelScorer, Scorer, TaskSpec

_log = logging.getLogger("prodguard.serving")


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_verified(
    registry: VersionReader, store_features: Sequence[Sequence[str]], version: int
) -> LoadedModel:
    """``models.load_checked``, served by the scorer the version's fast-path record selects
    (:func:`select`): what every replica, bare endpoint and replay loads."""
    return load_checked(
        registry, store_features, version, lambda loaded, found: select(registry, loaded, found)
    )


def compile_version(
    loaded: LoadedModel, rows: list[dict[str, Any]]
) -> tuple[dict[str, str], bytes]:
    """The fast-path tags of ``loaded``'s model and its artifact (b"" when unsupported: the
    tags then say why), parity measured on ``rows`` by the deserialised artifact."""
    from prodguard.serving import treelite_adapter as treelite

    flavor = getattr(loaded.pipeline, "flavor", "sklearn")
    if flavor != "sklearn":
        return _unsupported(f"served through its MLflow {flavor} flavor"), b""
    try:
        frame = loaded.frame(rows)
        reference = ModelScorer(loaded.pipeline, loaded.spec.task).raw(frame)
        data = treelite.to_bytes(treelite.convert(loaded.pipeline, loaded.columns))
        served = treelite.from_bytes(loaded.pipeline, loaded.columns, data)
        gap = treelite.parity(served, frame, reference)
    except treelite.Unsupported as exc:
        return _unsupported(str(exc)), b""
    except Exception as exc:  # noqa: BLE001 - a failed conversion never loses the registration
        return _unsupported(f"the conversion failed ({type(exc).__name__}: {first_line(exc)})"), b""
    if not gap <= treelite.PARITY:
        return _unsupported(f"parity {gap:.3g} > {treelite.PARITY:g} on {len(frame)} rows"), b""
    return {
        names.FAST_PATH_DIGEST: digest(data),
        names.FAST_PATH_PARITY: f"{gap:.3g}",
        names.FAST_PATH_ROWS: str(len(frame)),
        names.FAST_PATH: treelite.runtime(),
    }, data


def record(
    registry: Any,
    version: int,
    model: Any,
    spec: TaskSpec,
    tags: Mapping[str, str],
    stats: Mapping[str, Any],
    evaluation: pd.DataFrame,
) -> str:
    """Convert a just registered version's ``model`` and record its fast path on it (artifact
    and tags, or the reason it serves itself); returns how it will be scored. ``tags``: the
    version's registration tags; ``evaluation``: its held-out features."""
    found = Lineage.from_tags(tags)
    if found is None:  # not a prodguard registration: nothing to record it against
        return names.scoring_path({})
    loaded = LoadedModel(
        version=version,
        pipeline=model,
        columns=found.columns,
        categorical=found.categorical,
        fallbacks=found.fallbacks,
        categories=categories_of(stats),
        spec=spec,
    )
    from prodguard.serving.treelite_adapter import probe_rows

    rows = evaluation[list(found.columns)].to_dict("records")
    recorded, data = compile_version(loaded, rows + probe_rows(found.fallbacks, loaded.categories))
    if data and not isinstance(registry, BinaryArtifacts):
        recorded, data = _unsupported("the registry stores no binary artifacts"), b""
    if data:
        registry.log_bytes_artifact(version, names.FAST_PATH_ARTIFACT, data)
    for key, value in recorded.items():  # FAST_PATH last: without it the load converts
        registry.set_version_tag(version, key, value)
    return names.scoring_path(recorded)


def select(registry: Any, loaded: LoadedModel, found: Lineage) -> tuple[Scorer | None, str]:
    """The scorer ``loaded`` serves with (None: the model itself) and how, from the version's
    fast-path record (module docstring). RegistryUnavailable propagates (the load is retried)."""
    if found.fault or found.fast_path is None or not isinstance(registry, BinaryArtifacts):
        return convert_at_load(loaded)
    if found.fast_path.startswith(names.FAST_PATH_UNSUPPORTED):
        return None, "the model itself: " + found.fast_path.removeprefix(
            names.FAST_PATH_UNSUPPORTED
        )
    try:
        data = registry.load_bytes_artifact(loaded.version, names.FAST_PATH_ARTIFACT, found.run_id)
    except RegistryUnavailable:
        raise
    except RegistryError as exc:
        return _fall_back(loaded, f"its {names.FAST_PATH_ARTIFACT} cannot be read ({exc})")
    return verified(loaded, data, found)


def verified(loaded: LoadedModel, data: bytes, found: Lineage) -> tuple[Scorer | None, str]:
    """The stored artifact ``data`` as ``loaded``'s scorer when its digest is the recorded one
    and it scores the fallbacks row as the model does; else the model itself, with the reason
    logged (one line)."""
    from prodguard.serving import treelite_adapter as treelite

    recorded = found.fast_path_digest
    sha = digest(data)
    if sha != recorded:
        return _fall_back(
            loaded,
            f"its {names.FAST_PATH_ARTIFACT} does not match the digest recorded at registration "
            f"(sha256 {sha[:12]}..., recorded {(recorded or 'none')[:12]}...): it was modified "
            "in the artifact store; restore it or register the model again",
        )
    try:
        scorer = treelite.from_bytes(loaded.pipeline, loaded.columns, data)
        frame = loaded.frame([loaded.fallbacks])
        reference = ModelScorer(loaded.pipeline, loaded.spec.task).raw(frame)
        gap = treelite.parity(scorer, frame, reference)
    except treelite.Unsupported as exc:
        return _fall_back(loaded, f"its {names.FAST_PATH_ARTIFACT} does not load ({exc})")
    except Exception as exc:  # noqa: BLE001 - never refuse a version for its fast path
        reason = f"{type(exc).__name__}: {first_line(exc)}"
        return _fall_back(loaded, f"its {names.FAST_PATH_ARTIFACT} does not score ({reason})")
    if not gap <= treelite.PARITY:
        return _fall_back(loaded, f"its {names.FAST_PATH_ARTIFACT} scores {gap:.3g} apart")
    parity = found.fast_path_parity
    rows = f" on {found.fast_path_rows} rows" if found.fast_path_rows else ""
    return scorer, (
        f"fast path {found.fast_path} (stored artifact), parity "
        f"{parity if parity is not None else gap:.3g}{rows}"
    )


def convert_at_load(loaded: LoadedModel) -> tuple[Scorer | None, str]:
    """Today's path for versions without a recorded fast path: convert now, parity on probe
    rows."""
    from prodguard.serving.treelite_adapter import fast_scorer

    scorer, how = fast_scorer(loaded)
    if scorer is None:
        return None, f"the model itself: {how}"
    return scorer, f"fast path converted at load ({how})"


def _fall_back(loaded: LoadedModel, reason: str) -> tuple[None, str]:
    _log.warning("v%s fast path not used, the model scores itself: %s", loaded.version, reason)
    return None, f"the model itself: {reason}"


def _unsupported(reason: str) -> dict[str, str]:
    return {names.FAST_PATH: names.FAST_PATH_UNSUPPORTED + reason}
