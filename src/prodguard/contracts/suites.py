"""Expectation suites as JSON files: reading, structural checks, digests.

The file format is Great Expectations' own suite JSON::

    {"name": "readings", "expectations": [{"type": "expect_...", "kwargs": {...}}], "meta": {}}

This module checks the structure only; whether each expectation exists and its arguments are
valid is checked by the Great Expectations adapter when the suite is compiled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prodguard.digests import document_digest
from prodguard.errors import ContractError
from prodguard.templates import read_text_file

MAX_SUITE_BYTES = 16 * 1_048_576


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    expectations: tuple[dict[str, Any], ...]
    digest: str


def read_suite(path: Path) -> Suite:
    """Read and structurally check one suite file. Raises ContractError naming the problem."""
    if not path.exists():
        raise ContractError(f"suite file {path} not found; create it or fix 'sources.*.suite'")
    text = read_text_file(path, ContractError, MAX_SUITE_BYTES, kind="suite")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ContractError(
            f"suite file {path.name} is not valid JSON (line {exc.lineno}, column {exc.colno}: "
            f"{exc.msg}); fix the syntax"
        ) from None
    if not isinstance(document, dict):
        raise ContractError(f"suite file {path.name}: top level must be an object")
    name = document.get("name")
    if not isinstance(name, str) or not name:
        raise ContractError(f"suite file {path.name}: 'name' must be a non-empty string")
    expectations = document.get("expectations")
    if not isinstance(expectations, list) or not expectations:
        raise ContractError(f"suite file {path.name}: 'expectations' must be a non-empty list")
    for index, expectation in enumerate(expectations):
        where = f"suite file {path.name}: expectations[{index}]"
        if not isinstance(expectation, dict):
            raise ContractError(f"{where} must be an object with 'type' and 'kwargs'")
        unknown = set(expectation) - {"type", "kwargs", "meta", "id", "notes", "rendered_content"}
        if unknown:
            raise ContractError(f"{where}: unknown field(s) {sorted(unknown)}")
        if not isinstance(expectation.get("type"), str) or not expectation["type"]:
            raise ContractError(f"{where}: 'type' must name an expectation")
        if not isinstance(expectation.get("kwargs", {}), dict):
            raise ContractError(f"{where}: 'kwargs' must be an object")
    normalised = tuple(
        {"type": e["type"], "kwargs": dict(e.get("kwargs", {})), "meta": dict(e.get("meta", {}))}
        for e in expectations
    )
    digest = document_digest({"name": name, "expectations": list(normalised)})
    return Suite(name=name, path=path, expectations=normalised, digest=digest)
