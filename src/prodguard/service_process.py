"""Service processes started on free loopback ports and stopped by their starter (the benchmark,
the demo)."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from prodguard.errors import ServiceNotReady

READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningService:
    process: subprocess.Popen[bytes]
    base_url: str
    cold_start_s: float  # process start -> first 200 from /readyz
    log_path: Path

    def stop(self) -> None:
        """SIGTERM to the service's process group (BentoML's arbiter stops its workers, which
        run in sessions of their own), then wait; SIGKILL to whatever is left, by process id."""
        if self.process.poll() is not None:
            return
        workers = descendants(self.process.pid)
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=STOP_TIMEOUT_S)
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def descendants(pid: int) -> list[int]:
    """Process ids below ``pid`` (Linux ``/proc``; empty elsewhere)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(parent, []).append(int(entry.name))
    found, frontier = [], [pid]
    while frontier:
        children = parents.get(frontier.pop(), [])
        found += children
        frontier += children
    return found


def start_service(
    command: list[str], env: dict[str, str], cwd: Path, port: int, log_path: Path
) -> RunningService:
    """Start ``command`` (serving on ``port``) in a session of its own, its output to
    ``log_path``; return once ``/readyz`` answers 200, with the cold start it took."""
    began = time.perf_counter()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    service = RunningService(process, f"http://127.0.0.1:{port}", 0.0, log_path)
    deadline = time.monotonic() + READY_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                tail = log_path.read_text(errors="replace")[-1500:]
                raise ServiceNotReady(f"{command[0]} exited with {process.returncode}: {tail}")
            if _ready(port):
                service.cold_start_s = time.perf_counter() - began
                return service
            time.sleep(0.05)
        raise ServiceNotReady(
            f"the service was not ready within {READY_TIMEOUT_S:.0f} s; see {log_path}"
        )
    except BaseException:
        service.stop()
        raise


def _ready(port: int) -> bool:
    """``GET /readyz`` answers 200 (straight to loopback: no proxy from the environment)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", "/readyz")
        return connection.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()
