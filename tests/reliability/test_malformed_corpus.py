"""Bad input at scale: a corpus of malformed command lines, config files, registry and Feast
configs and expectation suites (tests/reliability/corpus/). Each gives exactly one clear error:

- a command line: a real `prodguard` process exits with the documented code, a short message on
  stderr naming what is wrong, no traceback, no secret echoed — and the project folder (the data
  folder included) is byte for byte what it was: a refused command writes nothing, not even an
  empty folder or a lock file;
- a file loaded by the library: the ProdguardError subclass, one line, the fragment, no secret.

What may a refused command create? Nothing, when the arguments or the files are what is wrong:
every case here is refused before a store is opened. A command whose arguments are fine but
whose *state* refuses it (`rollback` with no standby yet) opens the registry first, and MLflow
creates its empty SQLite store and artifact folder (and prodguard its audit database) on that
first open: a whole, empty store, not a half-written one — so that is allowed, and kept out of
this corpus. Lock files (the alert gate's, the ledger's) are only taken by commands that write.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from prodguard.config import load_settings
from prodguard.errors import ConfigError, ContractError, FeatureStoreError, RegistryError
from tests.conftest import make_project

pytestmark = pytest.mark.reliability

CORPUS = Path(__file__).parent / "corpus"
FILES = CORPUS / "files"
CLI = [sys.executable, "-m", "prodguard"]
WORKERS = 3


def cases(name: str) -> list[Any]:
    found = yaml.safe_load((CORPUS / name).read_text())
    return [pytest.param(case, id=case["name"].replace(" ", "-")) for case in found]


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every file and folder under ``root``: size and content hash (folders: size -1)."""
    found: dict[str, tuple[int, str]] = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if path.is_dir():
            found[name + "/"] = (-1, "")
        else:
            found[name] = (path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest())
    return found


def prepared_project(target: Path) -> Path:
    """The example project with a data folder holding some state (an alert, a state file)."""
    root = make_project(target)
    data = root / ".prodguard"
    (data / "state").mkdir(parents=True)
    (data / "alerts.jsonl").write_text('{"type": "drift_alert", "time": "2013-05-01"}\n')
    (data / "state" / "open_alerts.json").write_text("{}")
    return root


def run_case(case: dict[str, Any], root: Path) -> dict[str, Any]:
    argv = [a.replace("{files}", str(FILES)).replace("{project}", str(root)) for a in case["argv"]]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PRODGUARD_")}
    before = snapshot(root)
    began = time.perf_counter()
    done = subprocess.run(
        [*CLI, *argv],
        cwd=root,
        env={**clean, **case.get("env", {})},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return {
        "case": case,
        "code": done.returncode,
        "stdout": done.stdout,
        "stderr": done.stderr,
        "changed": _changes(before, snapshot(root)),
        "seconds": time.perf_counter() - began,
    }


def _changes(before: dict, after: dict) -> list[str]:
    return sorted(
        [f"+{n}" for n in after.keys() - before.keys()]
        + [f"-{n}" for n in before.keys() - after.keys()]
        + [f"~{n}" for n in before.keys() & after.keys() if before[n] != after[n]]
    )


def problems_of(result: dict[str, Any]) -> list[str]:
    case, stderr = result["case"], result["stderr"]
    output = result["stdout"] + stderr
    found = []
    if result["code"] != case["exit"]:
        found.append(f"exit {result['code']}, expected {case['exit']}")
    if "Traceback" in output:
        found.append("a traceback")
    lines = [line for line in stderr.splitlines() if line.strip()]
    if not lines or len(lines) > 6:
        found.append(f"{len(lines)} lines on stderr")
    if case["fragment"].lower() not in " ".join(stderr.split()).lower():
        found.append(f"no '{case['fragment']}'")
    if case.get("secret") and case["secret"] in output:
        found.append("the secret echoed")
    if result["changed"]:
        found.append(f"files changed: {result['changed'][:6]}")
    return found


def test_malformed_command_lines(tmp_path: Path) -> None:
    """Every command line of corpus/cli.yaml, as processes (a few at a time)."""
    # every value a string (2013-01-01 stays the text a shell would pass)
    corpus = yaml.load((CORPUS / "cli.yaml").read_text(), Loader=yaml.BaseLoader)
    for case in corpus:
        case["exit"] = int(case["exit"])
    roots = [prepared_project(tmp_path / f"p{i}") for i in range(len(corpus))]
    began = time.perf_counter()
    with ThreadPoolExecutor(WORKERS) as pool:
        results = list(pool.map(run_case, corpus, roots))
    seconds = time.perf_counter() - began
    failures = []
    for result in results:
        found = problems_of(result)
        if found:
            tail = " | ".join(result["stderr"].strip().splitlines()[-3:])[:400]
            failures.append(f"{result['case']['name']}: {'; '.join(found)} -- stderr: {tail}")
    slowest = max(results, key=lambda r: r["seconds"])
    print(
        f"\n{len(results)} malformed command lines in {seconds:.1f} s ({WORKERS} processes at a "
        f"time; slowest {slowest['case']['name']} {slowest['seconds']:.1f} s)"
    )
    assert not failures, "\n".join(failures)


# ---- files loaded by the library -----------------------------------------------------------


def _set(document: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = document
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def _remove(document: dict, dotted: str) -> None:
    *parents, last = dotted.split(".")
    node = document
    for part in parents:
        node = node[part]
    del node[last]


def one_line(error: BaseException, case: dict[str, Any]) -> None:
    message = str(error)
    assert "\n" not in message and len(message) < 600, message
    assert case["fragment"].lower() in message.lower(), message
    if case.get("secret"):
        assert case["secret"] not in message


@pytest.mark.parametrize("case", cases("config.yaml"))
def test_malformed_config_files(case: dict[str, Any], project: Path) -> None:
    path = project / "prodguard.yaml"
    if case["name"] == "huge file":
        path.write_text("project:\n  name: flights\n" + "# padding\n" * 1_200_000)
    elif "file" in case:
        shutil.copy(CORPUS / "config" / case["file"], path)
    elif "set" in case or "remove" in case:
        document = yaml.safe_load(path.read_text())
        for dotted, value in (case.get("set") or {}).items():
            _set(document, dotted, value)
        for dotted in case.get("remove", []):
            _remove(document, dotted)
        path.write_text(yaml.safe_dump(document))
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ=case.get("env", {}))
    one_line(caught.value, case)


def _write_case_file(case: dict[str, Any], path: Path) -> None:
    if case.get("missing"):
        return
    if case.get("directory"):
        path.mkdir()
    elif case.get("huge"):
        with path.open("w") as file:
            file.write('{"name": "s", "expectations": [')
            file.write('{"type": "expect_column_to_exist", "kwargs": {"column": "a"}},' * 300_000)
            file.write("]}")
    elif case.get("garbage"):
        path.write_bytes(bytes(range(256)) * 4)
    elif case.get("bytes"):
        path.write_bytes(str(case["text"]).encode("latin-1"))
    else:
        path.write_text(case["text"])


@pytest.mark.parametrize("case", cases("registry.yaml"))
def test_malformed_registry_configs(case: dict[str, Any], settings, tmp_path: Path) -> None:
    from prodguard.registry.config import load_registry_config

    path = tmp_path / "registry.yaml"
    if "bytes" in case:
        path.write_bytes(case["bytes"].encode("latin-1"))
    else:
        _write_case_file(case, path)
    bad = settings.model_copy(
        update={"registry": settings.registry.model_copy(update={"config": path})}
    )
    with pytest.raises(RegistryError) as caught:
        load_registry_config(bad)
    one_line(caught.value, case)


@pytest.mark.parametrize("case", cases("feast.yaml"))
def test_malformed_feast_configs(case: dict[str, Any], settings, tmp_path: Path) -> None:
    from prodguard.features.feast_adapter import FeastStore, render_store_config

    path = tmp_path / "feature_store.yaml"
    _write_case_file(case, path)
    bad = settings.model_copy(
        update={"feature_store": settings.feature_store.model_copy(update={"config": path})}
    )
    with pytest.raises(FeatureStoreError) as caught:
        FeastStore(bad) if case.get("open") else render_store_config(bad)
    one_line(caught.value, case)


@pytest.fixture(scope="module")
def validator():
    from prodguard.contracts.gx_adapter import GxValidator

    return GxValidator()


@pytest.mark.parametrize("case", cases("suites.yaml"))
def test_malformed_suites(case: dict[str, Any], tmp_path: Path, validator) -> None:
    from prodguard.contracts.suites import read_suite

    path = tmp_path / "suite.json"
    _write_case_file(case, path)
    with pytest.raises(ContractError) as caught:
        suite = read_suite(path)
        assert case.get("compile"), "the suite was read without an error"
        validator.compile(suite)
    one_line(caught.value, case)
