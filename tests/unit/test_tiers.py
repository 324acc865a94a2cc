"""A test's tier comes from its folder (tests/conftest.py), not from each file remembering it:
this file declares no marker and still runs under `-m unit`."""

from __future__ import annotations

import pytest


def test_the_folder_gives_the_tier(request: pytest.FixtureRequest) -> None:
    tiers = {m.name for m in request.node.iter_markers()} & {"unit", "integration", "e2e"}
    assert tiers == {"unit"}
