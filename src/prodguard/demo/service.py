"""A ``prodguard serve`` process driven over HTTP on loopback."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from prodguard import app
from prodguard.config import Settings
from prodguard.errors import ServiceNotReady

SWAPS = "prodguard_model_swaps_total"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServiceProcess:
    """Starts the prediction service with ``environment`` and stops it; its stderr goes to
    ``log_path``."""

    def __init__(self, settings: Settings, environment: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command, env = app.serve_command(settings, "127.0.0.1", self.port)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._stderr = log_path.open("wb")
        self._process = subprocess.Popen(
            command,
            env={**env, **environment},
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            stdin=subprocess.DEVNULL,
        )

    def wait_ready(self, timeout: float = 120.0) -> float:
        """Seconds until /readyz answered 200; raises ServiceNotReady (with the log's tail)."""
        began = time.perf_counter()
        while time.perf_counter() - began < timeout:
            if self._process.poll() is not None:
                raise ServiceNotReady(f"the service exited at start: {self._tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as response:
                    if response.status == 200:
                        return time.perf_counter() - began
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        raise ServiceNotReady(f"the service was not ready within {timeout:.0f} s: {self._tail()}")

    def swaps(self) -> float:
        """The service's count of hot swaps (it changes when it follows a move)."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as response:
            for line in response.read().decode().splitlines():
                if line.startswith(SWAPS + " "):
                    return float(line.split()[1])
        return 0.0

    def wait_swap(self, before: float, timeout: float = 30.0) -> float:
        """Seconds until the swap count exceeds ``before`` (the service followed a move)."""
        began = time.perf_counter()
        while time.perf_counter() - began < timeout:
            if self.swaps() > before:
                return time.perf_counter() - began
            time.sleep(0.05)
        raise ServiceNotReady(f"the service did not follow the move within {timeout:.0f} s")

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        request = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._stderr.close()

    def _tail(self) -> str:
        self._stderr.flush()
        lines = self.log_path.read_text(errors="replace").strip().splitlines()
        return " | ".join(lines[-3:]) if lines else "(no output)"
