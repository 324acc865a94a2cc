"""Running the prodguard CLI as a user does: a separate process in the project folder."""

import os
import subprocess
import sys
from pathlib import Path

CLI = [sys.executable, "-m", "prodguard"]


def run(project: Path, *args: str, expect: int | None = 0, timeout: int = 600):
    """Run ``prodguard ARGS`` with no PRODGUARD_* variables; check the exit code if given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRODGUARD_")}
    done = subprocess.run(
        [*CLI, *args], cwd=project, env=env, capture_output=True, text=True, timeout=timeout
    )
    if expect is not None:
        assert done.returncode == expect, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done
