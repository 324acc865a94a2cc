"""``${VAR}`` placeholders in tool configs: filled from variables, then the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from prodguard.errors import ConfigError
from prodguard.templates import load_yaml_template

pytestmark = pytest.mark.unit


def _render(tmp_path: Path, text: str, environ: dict[str, str]) -> dict:
    path = tmp_path / "tool.yaml"
    path.write_text(text, encoding="utf-8")
    return load_yaml_template(path, {"PRODGUARD_DATA_DIR": "/data"}, ConfigError, environ)


def test_variables_then_environment(tmp_path: Path) -> None:
    found = _render(tmp_path, 'a: ${PRODGUARD_DATA_DIR}/x\nb: ["${HOST}:1"]\n', {"HOST": "h"})
    assert found == {"a": "/data/x", "b": ["h:1"]}


def test_default_used_when_unset_or_empty(tmp_path: Path) -> None:
    text = "a: ${P:-flights}\nb: ${Q:-}\nc: ${R:-x}\n"
    assert _render(tmp_path, text, {"Q": "", "R": "set"}) == {"a": "flights", "b": "", "c": "set"}


def test_unset_without_default_is_an_error_naming_it(tmp_path: Path) -> None:
    expected = r"tool.yaml uses unset environment variable\(s\) \['SECRET_URL'\]"
    with pytest.raises(ConfigError, match=expected):
        _render(tmp_path, "url: ${SECRET_URL}\n# ${IN_A_COMMENT}\n", {})


def test_set_but_empty_without_default_stays_empty(tmp_path: Path) -> None:
    assert _render(tmp_path, "a: x${E}y\n", {"E": ""}) == {"a": "xy"}
