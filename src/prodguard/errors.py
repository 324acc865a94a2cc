"""The one error tree of prodguard.

Every failure that reaches a user is a ``ProdguardError``: its message says what is wrong and
what to do, in one line, and never echoes the offending payload. Errors raised by the tools we
wire (Feast, Great Expectations, MLflow, ...) are wrapped into a subclass by their adapter.
"""

from __future__ import annotations

import re


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


class RegistryUnavailable(RegistryError):
    """The MLflow store (server or database) or the audit database cannot be reached; nothing
    was changed. Safe to retry once it is back."""

    exit_code = 5


class ArtifactIntegrityError(PromotionRefused):
    """A version's stored model artifact does not match the digest recorded at registration
    (or none was recorded): it is never loaded."""


class ModelContractError(InputError):
    """A model offered to prodguard does not fit the project: it cannot be loaded from its URI,
    has no signature, its inputs differ from the feature service's, or it does not return what
    its declared task needs."""


class RequestRejected(InputError):
    """A prediction request cannot be answered as asked (invalid field, degraded critical feature).

    ``problems`` lists (field, what is wrong) pairs without the offending values.
    """

    def __init__(self, message: str, problems: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class UnknownRequest(InputError):
    """Feedback for a request id that was never logged."""


class DuplicateRequest(InputError):
    """A prediction with this request id (and role) is already in the log."""


class FeedbackConflict(InputError):
    """A different outcome was already recorded for this request id."""


class ServiceNotReady(ProdguardError):
    """The service has no champion loaded yet."""


class ModelFailed(ProdguardError):
    """A served model raised while scoring: the failure is charged to its version (the guard's
    error rate; in a canary, the canary's, not the champion's). The message names the version
    and the exception's type only, never the request's values."""

    def __init__(self, version: int, exc: BaseException) -> None:
        self.version = version
        super().__init__(
            f"model v{version} failed to score the request ({type(exc).__name__}); the service "
            "log has the traceback"
        )


class TrainingError(ProdguardError):
    """A model cannot be trained or evaluated on the requested window."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (or its type), for one-line error messages."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:limit]


_URI_CREDENTIALS = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]*(?:@[^/\s@]*)*@")
_PASSWORD_PARAMETER = re.compile(r"\b(password|passwd|pwd)=[^,;&\s]*", re.IGNORECASE)


def redact(text: str) -> str:
    """Hide credentials before a URI, connection string or error message goes into a message:
    the user info of every ``scheme://user:pass@host`` and every ``password=...`` parameter."""
    text = _URI_CREDENTIALS.sub(r"\1***@", text)
    return _PASSWORD_PARAMETER.sub(r"\1=***", text)
