"""YAML files with ``${VAR}`` placeholders (tool configs such as feature_store.yaml).

Placeholders are filled in string values only (comments are never touched): from the given
variables first (``PRODGUARD_DATA_DIR``), then from the environment; ``${VAR:-default}`` falls
back to the default when the variable is unset or empty. An unset variable without a default is
an error naming it, so credentials stay in the environment and out of files.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from prodguard.errors import ProdguardError

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


MAX_CONFIG_BYTES = 1_048_576  # a config file is a page of settings, not a data file


def read_text_file(
    path: Path, error: type[ProdguardError], limit: int = MAX_CONFIG_BYTES, kind: str = "config"
) -> str:
    """A config file's text: refused with ``error`` when unreadable, larger than ``limit``
    bytes (read no further) or not UTF-8."""
    try:
        with path.open("rb") as file:
            data = file.read(limit + 1)
    except OSError as exc:
        raise error(
            f"{kind} file {path} not found or unreadable ({type(exc).__name__}); "
            "fix the setting naming it"
        ) from None
    if len(data) > limit:
        raise error(
            f"{kind} file {path.name} is too large (over {limit // 1024} KiB); "
            "is it the right file?"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(
            f"{kind} file {path.name} cannot be read: not UTF-8 text (byte {exc.start}); "
            "save it as UTF-8"
        ) from None


def load_yaml_template(
    path: Path,
    variables: dict[str, str],
    error: type[ProdguardError],
    environ: dict[str, str] | None = None,
) -> dict[str, Any]:
    text = read_text_file(path, error)
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError:
        raise error(f"{path.name} is not valid YAML; fix the syntax") from None
    if not isinstance(document, dict):
        raise error(f"{path.name}: top level must be a mapping")
    refuse_credentials(document, path.name, error)
    return fill_placeholders(
        document, {**(os.environ if environ is None else environ), **variables}, path.name, error
    )


def fill_placeholders(
    document: dict[str, Any], values: dict[str, str], origin: str, error: type[ProdguardError]
) -> dict[str, Any]:
    """``document`` with every ``${VAR}`` / ``${VAR:-default}`` in its strings filled in."""
    missing: set[str] = set()

    def fill(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if values.get(name):
            return values[name]
        if default is not None:
            return default
        if name not in values:
            missing.add(name)
        return ""

    def substitute(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: substitute(value) for key, value in node.items()}
        if isinstance(node, list):
            return [substitute(value) for value in node]
        if isinstance(node, str):
            return _VAR.sub(fill, node)
        return node

    rendered = substitute(document)
    if missing:
        raise error(f"{origin} uses unset environment variable(s) {sorted(missing)}; export them")
    return rendered


_CREDENTIAL = re.compile(r"://[^/@\s:]+:[^/@\s$]+@")  # user:password@ written out, not ${VAR}


def refuse_credentials(
    node: Any, origin: str, error: type[ProdguardError], where: str = ""
) -> None:
    """Raise if a string of ``node`` (a parsed YAML document) carries a password in a URL."""
    if isinstance(node, dict):
        for key, value in node.items():
            refuse_credentials(value, origin, error, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list):
        for value in node:
            refuse_credentials(value, origin, error, where)
    elif isinstance(node, str) and _CREDENTIAL.search(node):
        raise error(
            f"{origin}: {where} holds a password; put the URL in an environment variable "
            "(e.g. PRODGUARD_DATABASE_URL) and write ${PRODGUARD_DATABASE_URL} in the file"
        )
