"""Use case of ``prodguard adopt``: the adoption of a model trained elsewhere
(:mod:`prodguard.registry.adoption`) on the project's feature store and registry."""

from __future__ import annotations

from typing import cast

from prodguard.config import Settings
from prodguard.ingestion.ledger import Ledger
from prodguard.registry.adoption import (
    AdoptResult,
    AdoptWindows,
    ModelAdopter,
    adopt,
    parse_classes,
)
from prodguard.wiring import feature_store, registry_operations


def adopt_model(
    settings: Settings,
    model_uri: str,
    task: str | None,
    windows: AdoptWindows,
    actor: str,
    classes: str | None = None,
) -> AdoptResult:
    """``classes``: ``--classes a,b,c``, the labels of a classifier pyfunc's array columns."""
    digests = Ledger(settings.paths.state_dir).suite_digests(windows.train_start, windows.train_end)
    operations = registry_operations(settings)  # on an MlflowRegistry, which adopts models
    return adopt(
        settings,
        feature_store(settings),
        operations,
        cast(ModelAdopter, operations.registry),
        digests,
        model_uri,
        task,
        windows,
        actor,
        parse_classes(classes),
    )
