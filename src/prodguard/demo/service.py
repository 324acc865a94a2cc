"""The demo's ``prodguard serve`` process, driven over HTTP on loopback."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from prodguard import app
from prodguard.config import Settings
from prodguard.errors import ServiceNotReady
from prodguard.service_process import free_port, start_service

SWAPS = "prodguard_model_swaps_total"


class ServiceProcess:
    """Starts the prediction service with ``environment`` (returning once it is ready) and
    stops it; its output goes to ``log_path``."""

    def __init__(self, settings: Settings, environment: dict[str, str], log_path: Path) -> None:
        assert settings.config_path is not None
        port = free_port()
        command, env = app.serve_command(settings, "127.0.0.1", port)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._running = start_service(
            command, {**env, **environment}, settings.config_path.parent, port, log_path
        )
        self.url = self._running.base_url
        self.cold_start_s = self._running.cold_start_s

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
        self._running.stop()
