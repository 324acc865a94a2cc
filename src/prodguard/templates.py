"""YAML files with ``${VAR}`` placeholders (tool configs such as feature_store.yaml).

Placeholders are filled in string values only (comments are never touched): from the given
variables first (``PRODGUARD_DATA_DIR``), then from the environment. An unset variable is an
error naming it, so credentials stay in the environment and out of files.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from prodguard.errors import ProdguardError

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def load_yaml_template(
    path: Path,
    variables: dict[str, str],
    error: type[ProdguardError],
    environ: dict[str, str] | None = None,
) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        raise error(
            f"config file {path} not found or unreadable; fix the setting naming it"
        ) from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError:
        raise error(f"{path.name} is not valid YAML; fix the syntax") from None
    if not isinstance(document, dict):
        raise error(f"{path.name}: top level must be a mapping")
    values = {**(os.environ if environ is None else environ), **variables}
    missing: set[str] = set()

    def substitute(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: substitute(value) for key, value in node.items()}
        if isinstance(node, list):
            return [substitute(value) for value in node]
        if isinstance(node, str):
            missing.update(name for name in _VAR.findall(node) if name not in values)
            return _VAR.sub(lambda m: values.get(m.group(1), ""), node)
        return node

    rendered = substitute(document)
    if missing:
        raise error(
            f"{path.name} uses unset environment variable(s) {sorted(missing)}; export them"
        )
    return rendered
