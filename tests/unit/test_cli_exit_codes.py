"""The CLI's exit codes mean what docs/cli.md says; a failed drill has its own."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from prodguard import cli, errors
from prodguard.rollout import drill

DOCS = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def documented_codes() -> dict[int, str]:
    section = DOCS.read_text().split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    return {int(m[1]): m[2] for m in re.finditer(r"^\| (\d+) \| (.+) \|$", section, re.M)}


def test_every_exit_code_in_use_is_documented_once() -> None:
    codes = documented_codes()
    errors_codes = {
        cls.exit_code
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.ProdguardError)
    }
    used = errors_codes | {cli.QUARANTINED_EXIT, cli.DRILL_FAILED_EXIT}
    assert used <= set(codes), used - set(codes)
    assert "unreachable" in codes[errors.RegistryUnavailable.exit_code]
    assert "drill" not in codes[errors.RegistryUnavailable.exit_code]
    assert "drill" in codes[cli.DRILL_FAILED_EXIT]
    assert cli.DRILL_FAILED_EXIT not in errors_codes | {cli.QUARANTINED_EXIT}


def _run(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> int:
    monkeypatch.setattr(sys, "argv", ["prodguard", *argv])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    return int(exit_.value.code or 0)


@pytest.mark.parametrize("passed", [True, False])
def test_a_failed_drill_exits_with_its_own_code(
    monkeypatch: pytest.MonkeyPatch, passed: bool
) -> None:
    result = SimpleNamespace(
        version=2,
        passed=passed,
        reason="no trigger fired",
        detect_minutes=None,
        latency_requests=10,
        latency_p50_ms=1.0,
        latency_p99_ms=2.0,
        to_json=lambda: {"passed": passed},
    )
    monkeypatch.setattr(cli, "_settings", lambda: None)
    monkeypatch.setattr(cli, "run_drill", lambda *args: result)
    code = _run(monkeypatch, ["drill", "--json"])
    assert code == (0 if passed else cli.DRILL_FAILED_EXIT)


@pytest.mark.parametrize("shift", [3.0, -1.0, 1.5])
def test_drill_shift_out_of_range_names_the_value_given(shift: float) -> None:
    settings: Any = None  # refused before the settings are read
    with pytest.raises(errors.InputError, match=rf"not {shift:g}$"):
        drill.run_drill(settings, shift=shift)
