"""The generic core speaks of models, not of the example project: the example's words live in
src/prodguard_flights, prodguard.yaml and the example's folders, never in src/prodguard."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from prodguard.config import load_settings
from prodguard.errors import ConfigError

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "src" / "prodguard"
# The example project's words (NYC flights), the one list this check reads.
EXAMPLE_WORDS = ("flights?", "delay(ed)?", "carrier", "tailnum", "airport", "weather")
EXAMPLE = re.compile(r"\b(" + "|".join(EXAMPLE_WORDS) + r")\b", re.IGNORECASE)


def _example_words(text: str) -> list[str]:
    return [m.group(0) for m in EXAMPLE.finditer(text)]


def test_the_check_sees_the_example_words() -> None:
    assert _example_words("Predict one flight; delayed by weather at the airport") == [
        "flight",
        "delayed",
        "weather",
        "airport",
    ]
    assert _example_words("max_in_flight, delay_cost, flightless") == []


def test_core_holds_no_word_of_the_example_project() -> None:
    files = [p for p in CORE.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert any(p.name == "config.py" for p in files)
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in files
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if _example_words(line)
    ]
    assert not found, "the example's words in the generic core:\n" + "\n".join(found)


@pytest.mark.parametrize("key", ["name", "outcome"])
def test_the_kpi_name_and_outcome_come_from_the_project(project: Path, key: str) -> None:
    path = project / "prodguard.yaml"
    text = path.read_text()
    line = next(line for line in text.splitlines(keepends=True) if line.startswith(f"    {key}: "))
    path.write_text(text.replace(line, "", 1))
    with pytest.raises(ConfigError, match=rf"monitoring\.kpi\.{key}: required key is missing"):
        load_settings(path, environ={})
