"""Running the prodguard CLI as a user does: a separate process in the project folder."""

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "prodguard"]
# Debian's Chromium, headless, as root, on a machine whose network is closed (no background
# connections, no first-run or update checks): the screenshot and MLflow UI tests
HEADLESS_CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def run(
    project: Path,
    *args: str,
    expect: int | None = 0,
    timeout: int = 600,
    env: dict[str, str] | None = None,
):
    """Run ``prodguard ARGS`` with only the given PRODGUARD_* variables; check the exit code."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PRODGUARD_")}
    done = subprocess.run(
        [*CLI, *args],
        cwd=project,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if expect is not None:
        assert done.returncode == expect, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture
def mlflow_ui(project: Path):  # noqa: D103
    """The MLflow UI/server a user would open on the project's store (started on demand)."""
    processes = []

    def start(status: dict) -> str:
        port = free_port()
        command = status["mlflow_ui"].replace(
            ".venv/bin/mlflow", str(Path(sys.executable).parent / "mlflow")
        )
        command = command.replace("--port 5000", f"--port {port} --workers 1")
        env = {
            **os.environ,
            "MLFLOW_DISABLE_TELEMETRY": "true",
            # the UI's background job runner (a dozen processes) is not needed to browse
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        process = subprocess.Popen(
            command.split(),
            cwd=project,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        processes.append(process)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2)
                return base
            except OSError:
                if process.poll() is not None:
                    raise RuntimeError("mlflow server exited") from None
                time.sleep(0.5)
        raise RuntimeError("mlflow server did not start within 90 s")

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=20)


@contextlib.contextmanager
def serving(
    project: Path, env: dict[str, str] | None = None, log_name: str = "serve.log"
) -> Iterator[str]:
    """A real `prodguard serve` process on a free port; yields its base URL once ready."""
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PRODGUARD_")}
    process = subprocess.Popen(
        [*CLI, "serve", "--port", str(port)],
        cwd=project,
        env={**clean, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=(project / log_name).open("w"),  # a pipe nobody reads would fill and block
        text=True,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{base}/readyz", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                if process.poll() is not None:
                    log = (project / log_name).read_text()[-2000:]
                    raise RuntimeError(f"prodguard serve exited: {log}") from None
            time.sleep(0.5)
        else:
            raise RuntimeError("prodguard serve not ready within 120 s")
        yield base
    finally:
        if process.poll() is None:
            os.killpg(process.pid, 15)
        process.wait(timeout=30)
