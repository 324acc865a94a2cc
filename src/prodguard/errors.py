"""The one error tree of prodguard.

Every failure that reaches a user is a ``ProdguardError``: its message says what is wrong and
what to do, in one line, and never echoes the offending payload. Errors raised by the tools we
wire (Feast, Great Expectations, MLflow, ...) are wrapped into a subclass by their adapter.
"""

from __future__ import annotations


class ProdguardError(Exception):
    """Base of every error prodguard raises on purpose."""

    exit_code: int = 1


class ConfigError(ProdguardError):
    """prodguard.yaml or a PRODGUARD_* override is malformed."""

    exit_code = 2


class InputError(ProdguardError):
    """A command-line argument, file or request is malformed."""

    exit_code = 2


class DataSourceError(ProdguardError):
    """Raw data cannot be found or read (missing package, missing file, missing column)."""


class NoDataError(ProdguardError):
    """A requested time window holds no data."""


class ContractError(ProdguardError):
    """An expectation suite file is invalid (not JSON, unknown expectation, bad arguments)."""


class FeatureStoreError(ProdguardError):
    """The Feast feature store failed or returned something inconsistent."""


class StorageError(ProdguardError):
    """A local store (offline parquet, quarantine, state files) could not be read or written."""


class RegistryError(ProdguardError):
    """The model registry (MLflow) or its audit log failed, or a version/alias is unknown."""


class PromotionRefused(RegistryError):
    """An alias move was refused (no candidate, no standby, contract mismatch, unloadable model)."""


class ConcurrentUpdateError(RegistryError):
    """Someone else moved the aliases between the read and the move; nothing was changed."""

    exit_code = 4


class TrainingError(ProdguardError):
    """A model cannot be trained or evaluated on the requested window."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (or its type), for one-line error messages."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:limit]
