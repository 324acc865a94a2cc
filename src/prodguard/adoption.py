"""Use case of ``prodguard adopt``: the adoption of a model trained elsewhere
(:mod:`prodguard.registry.adoption`) on the project's feature store and registry."""

from __future__ import annotations

from prodguard.config import Settings
from prodguard.ingestion.ledger import Ledger
from prodguard.registry.adoption import AdoptResult, AdoptWindows, adopt
from prodguard.wiring import feature_store, registry_operations


def adopt_model(
    settings: Settings, model_uri: str, task: str | None, windows: AdoptWindows, actor: str
) -> AdoptResult:
    digests = Ledger(settings.paths.state_dir).suite_digests(windows.train_start, windows.train_end)
    return adopt(
        settings,
        feature_store(settings),
        registry_operations(settings),
        digests,
        model_uri,
        task,
        windows,
        actor,
    )
