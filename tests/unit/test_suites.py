import json
from pathlib import Path

import pytest

from prodguard.contracts.suites import read_suite
from prodguard.errors import ContractError

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, document) -> Path:
    path = tmp_path / "suite.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


@pytest.mark.parametrize("name", ["weather", "planes", "carrier_stats", "flights"])
def test_shipped_suites_read(name: str) -> None:
    suite = read_suite(ROOT / "expectations" / f"{name}.json")
    assert suite.name == name
    assert len(suite.expectations) >= 10
    assert len(suite.digest) == 64


def test_digest_ignores_key_order(tmp_path: Path) -> None:
    a = {"name": "s", "expectations": [{"type": "expect_x", "kwargs": {"a": 1, "b": 2}}]}
    b = {"expectations": [{"kwargs": {"b": 2, "a": 1}, "type": "expect_x"}], "name": "s"}
    first = read_suite(write(tmp_path, a)).digest
    assert read_suite(write(tmp_path, b)).digest == first
    a["expectations"][0]["kwargs"]["a"] = 3
    assert read_suite(write(tmp_path, a)).digest != first


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ('{"name": "s", "expectations": [', "is not valid JSON (line 1"),
        ([1, 2], "top level must be an object"),
        ({"expectations": [{"type": "x"}]}, "'name' must be a non-empty string"),
        ({"name": "s", "expectations": []}, "'expectations' must be a non-empty list"),
        ({"name": "s", "expectations": ["x"]}, "expectations[0] must be an object"),
        ({"name": "s", "expectations": [{"kwargs": {}}]}, "'type' must name an expectation"),
        (
            {"name": "s", "expectations": [{"type": "e", "kwargs": []}]},
            "'kwargs' must be an object",
        ),
        ({"name": "s", "expectations": [{"type": "e", "kwarg": {}}]}, "unknown field(s) ['kwarg']"),
    ],
)
def test_invalid_suites(tmp_path: Path, document, message: str) -> None:
    with pytest.raises(ContractError) as caught:
        read_suite(write(tmp_path, document))
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_missing_suite_file(tmp_path: Path) -> None:
    with pytest.raises(ContractError, match="not found"):
        read_suite(tmp_path / "nope.json")
