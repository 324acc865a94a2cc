"""The prediction log's disk fills up under load: answers that cannot be logged are refused with
503 (never a 200 whose record is lost), nothing acknowledged is lost, and the service answers
again as soon as space returns — without a restart.

The project's data folder (prediction log, online store, BentoML home) is a tmpfs of its own,
sized to what it holds plus a little; a filler file then takes every free byte, and is deleted
again. Needs root (mount); skipped elsewhere. Loops are bounded and talk to loopback only."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from prodguard.service_process import free_port
from tests.conftest import copy_project
from tests.reliability.test_serving_faults import Load, answered_records, start

pytestmark = [pytest.mark.reliability, pytest.mark.e2e]
HEADROOM_MB = 48


@contextlib.contextmanager
def own_filesystem(folder: Path) -> Iterator[Path]:
    """``folder`` moved onto a tmpfs of its size plus HEADROOM_MB; unmounted afterwards."""
    kept = folder.with_name(folder.name + ".kept")
    folder.rename(kept)
    folder.mkdir()
    used_mb = sum(p.stat().st_size for p in kept.rglob("*") if p.is_file()) // 2**20 + 1
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={used_mb + HEADROOM_MB}m", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        folder.rmdir()
        kept.rename(folder)
        pytest.skip(f"cannot mount a tmpfs here (root needed): {mounted.stderr.strip()}")
    try:
        shutil.copytree(kept, folder, dirs_exist_ok=True)
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill(folder: Path) -> Path:
    """A file that takes every free byte of ``folder``'s filesystem (unbuffered writes, each
    smaller than the last once the device refuses)."""
    filler = folder / "filler.bin"
    block = b"\0" * 2**20
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for size in (2**20, 2**14, 2**10, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, block[:size])
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_refuses_with_503_loses_nothing_and_recovers(served_project, tmp_path):
    project = copy_project(served_project, tmp_path / "project")
    from prodguard import app
    from prodguard.config import load_settings
    from tests.conftest import utc

    settings = load_settings(project / "prodguard.yaml", environ={})
    app.feature_store(settings).materialize(until=utc("2013-05-01"))
    with own_filesystem(project / ".prodguard") as data:
        port = free_port()
        service = start(project, {}, port, "serve.log")
        try:
            with Load(port, rate=60, clients=6, prefix="disk") as load:
                time.sleep(3)
                filled_at = time.monotonic()
                filler = fill(data)
                time.sleep(4)
                freed_at = time.monotonic()
                filler.unlink()
                time.sleep(6)
            stopped_at = time.monotonic()
        finally:
            service.stop()
        outcomes = list(load.outcomes)
        logged = answered_records(project)

    statuses = {s for _, _, s, _ in outcomes}
    full = [s for t, _, s, _ in outcomes if filled_at + 0.5 < t < freed_at]
    after = [s for t, _, s, _ in outcomes if t > freed_at + 2]
    acknowledged = {rid for _, rid, status, _ in outcomes if status == 200}
    assert statuses <= {200, 503}, f"only answers or 503 refusals: {statuses}"
    assert 503 in full, "a full disk must refuse what it cannot log"
    assert after and set(after) == {200}, "the service answers again once space returns"
    assert acknowledged <= set(logged), "an acknowledged prediction is not in the log"
    assert set(logged.values()) == {1}
    refused = [rid for _, rid, status, _ in outcomes if status == 503]
    assert not set(refused) & set(logged), "a refused request left a record"
    first_ok = min(t for t, _, s, _ in outcomes if t > freed_at and s == 200)
    print(
        f"\n[disk full] {len(outcomes)} requests over {stopped_at - load.began:.1f} s: "
        f"{len(acknowledged)} answered and logged once, {len(refused)} refused with 503 while "
        f"the disk was full ({freed_at - filled_at:.1f} s); first answer "
        f"{first_ok - freed_at:.2f} s after space returned"
    )
