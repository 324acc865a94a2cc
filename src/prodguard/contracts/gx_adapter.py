"""Great Expectations adapter: the only module that imports ``great_expectations``.

Batch validation runs on an in-memory (ephemeral) context with analytics and progress bars off.
It has a fixed cost of ~10-30 ms per call: right for ingestion batches, not for requests.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from prodguard.contracts.suites import Suite
from prodguard.errors import ContractError, first_line
from prodguard.telemetry import disable_telemetry

_AGGREGATE_KEYS = ("observed_value", "element_count", "unexpected_count", "unexpected_percent")


@dataclass(frozen=True)
class ExpectationOutcome:
    type: str
    column: str | None
    success: bool
    observed: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def describe(self) -> str:
        target = f"{self.type}({self.column})" if self.column else self.type
        if self.error:
            return f"{target}: could not be evaluated ({self.error})"
        shown = ", ".join(f"{k}={v}" for k, v in self.observed.items())
        return f"{target}: {shown}" if shown else target


@dataclass(frozen=True)
class ValidationReport:
    suite: str
    suite_digest: str
    success: bool
    evaluated: int
    outcomes: tuple[ExpectationOutcome, ...]
    raw: dict[str, Any]

    @property
    def failures(self) -> tuple[ExpectationOutcome, ...]:
        return tuple(o for o in self.outcomes if not o.success)


class GxValidator:
    """Compiles suites once and validates DataFrames against them."""

    def __init__(self) -> None:
        disable_telemetry()
        logging.getLogger("great_expectations").setLevel(logging.ERROR)
        import great_expectations as gx
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        self._gx = gx
        config = DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(),
            analytics_enabled=False,
            progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
        )
        self._context = gx.get_context(project_config=config, mode="ephemeral")
        source = self._context.data_sources.add_pandas("prodguard")
        asset = source.add_dataframe_asset("batch")
        self._batch_definition = asset.add_batch_definition_whole_dataframe("whole")
        self._compiled: dict[str, Any] = {}

    def compile(self, suite: Suite) -> Any:
        """Build the GX suite; raises ContractError for unknown expectations or bad kwargs."""
        if suite.digest in self._compiled:
            return self._compiled[suite.digest]
        from great_expectations.expectations.registry import get_expectation_impl

        expectations = []
        for index, spec in enumerate(suite.expectations):
            where = f"suite file {suite.path.name}: expectations[{index}] '{spec['type']}'"
            try:
                impl = get_expectation_impl(spec["type"])
            except Exception:  # noqa: BLE001 - GX raises several types here
                raise ContractError(
                    f"{where} is not a known Great Expectations expectation; check the name"
                ) from None
            try:
                expectations.append(impl(**spec["kwargs"], meta=spec["meta"] or None))
            except Exception as exc:  # noqa: BLE001 - pydantic v1/v2 and GX errors
                raise ContractError(f"{where} has invalid kwargs: {first_line(exc)}") from None
        compiled = self._gx.ExpectationSuite(name=suite.name, expectations=expectations)
        self._compiled[suite.digest] = compiled
        return compiled

    def unexpected_rows(
        self, frame: pd.DataFrame, suite: Suite, types: frozenset[str]
    ) -> dict[int, set[int]]:
        """For each expectation of ``types`` (by its index in the suite), the positions of the
        rows it rejects, as Great Expectations sees them (``mostly`` ignored: per-row verdicts).
        """
        compiled, indices = _row_level_suite(self._gx, suite, types)
        rejected: dict[int, set[int]] = {i: set() for i in indices}
        frame = frame.reset_index(drop=True)
        try:
            batch = self._batch_definition.get_batch(batch_parameters={"dataframe": frame})
            result = batch.validate(compiled, result_format={"result_format": "COMPLETE"})
        except Exception as exc:  # noqa: BLE001 - GX raises many types
            raise ContractError(f"row validation could not run: {first_line(exc)}") from None
        for item in result.results:
            index = int(item.expectation_config.meta["prodguard_index"])
            if item.exception_info and item.exception_info.get("raised_exception"):
                raise ContractError(
                    f"expectations[{index}] raised: {item.exception_info['exception_message']}"
                )
            rows = (item.result or {}).get("unexpected_index_list") or []
            rejected[index] = {int(r) for r in rows}
        return rejected

    def validate(self, frame: pd.DataFrame, suite: Suite) -> ValidationReport:
        compiled = self.compile(suite)
        try:
            batch = self._batch_definition.get_batch(batch_parameters={"dataframe": frame})
            result = batch.validate(compiled)
            raw = json.loads(json.dumps(result.to_json_dict(), default=str))
        except Exception as exc:  # noqa: BLE001 - GX raises many types
            raise ContractError(
                f"validation against suite '{suite.name}' could not run: {first_line(exc)}"
            ) from None
        outcomes = tuple(_outcome(item) for item in raw.get("results", []))
        return ValidationReport(
            suite=suite.name,
            suite_digest=suite.digest,
            success=bool(raw.get("success")),
            evaluated=len(outcomes),
            outcomes=outcomes,
            raw=raw,
        )


def _row_level_suite(gx: Any, suite: Suite, types: frozenset[str]) -> tuple[Any, list[int]]:
    kept = [(i, e) for i, e in enumerate(suite.expectations) if e["type"] in types]
    expectations = [
        {
            "type": e["type"],
            "kwargs": {k: v for k, v in e["kwargs"].items() if k != "mostly"},
            "meta": {"prodguard_index": i},  # GX does not keep the suite's order in results
        }
        for i, e in kept
    ]
    return gx.ExpectationSuite(name=f"{suite.name}-rows", expectations=expectations), [
        i for i, _ in kept
    ]


def _outcome(item: dict[str, Any]) -> ExpectationOutcome:
    config = item.get("expectation_config", {})
    kwargs = config.get("kwargs", {})
    result = item.get("result") or {}
    info = item.get("exception_info") or {}
    error = None
    if info.get("raised_exception"):
        error = (info.get("exception_message") or "exception").splitlines()[0]
    elif info and "raised_exception" not in info:
        messages = [v.get("exception_message") for v in info.values() if isinstance(v, dict)]
        error = (next((m for m in messages if m), "exception") or "exception").splitlines()[0]
    observed = {k: result[k] for k in _AGGREGATE_KEYS if k in result}
    return ExpectationOutcome(
        type=config.get("type", "?"),
        column=kwargs.get("column"),
        success=bool(item.get("success")),
        observed=observed,
        error=error[:200] if error else None,
    )
