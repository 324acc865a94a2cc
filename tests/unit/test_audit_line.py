"""An alias move is printed as one readable line: the aliases that moved, never a dict."""

from __future__ import annotations

import pytest

from prodguard.registry.audit import AuditRecord, move_line
from tests.conftest import utc


def record(action: str, before: dict, after: dict) -> AuditRecord:
    full = {"champion": None, "standby": None, "candidate": None}
    return AuditRecord(
        time=utc("2024-01-01"),
        model="m",
        action=action,
        actor="alice@host",
        from_state={**full, **before},
        to_state={**full, **after},
        reason="why",
        id=12,
    )


@pytest.mark.parametrize(
    ("action", "before", "after", "expected"),
    [
        (
            "promote",
            {"champion": 1, "candidate": 2},
            {"champion": 2, "standby": 1},
            "promote: champion v1 -> v2, standby unset -> v1, candidate v2 -> unset "
            "(audit #12, by alice@host)",
        ),
        (
            "promote",
            {"candidate": 1},
            {"champion": 1},
            "promote: champion unset -> v1, candidate v1 -> unset (audit #12, by alice@host)",
        ),
        (
            "rollback",
            {"champion": 2, "standby": 1, "candidate": 3},
            {"champion": 1, "candidate": 3},
            "rollback: champion v2 -> v1, standby v1 -> unset (audit #12, by alice@host)",
        ),
        (
            "set_candidate",
            {"champion": 1},
            {"champion": 1, "candidate": 3},
            "set_candidate: candidate unset -> v3 (audit #12, by alice@host)",
        ),
        (
            "traffic",
            {"champion": 1, "candidate": 2},
            {"champion": 1, "candidate": 2},
            "traffic: aliases unchanged (audit #12, by alice@host)",
        ),
    ],
)
def test_move_line_names_only_the_aliases_that_moved(
    action: str, before: dict, after: dict, expected: str
) -> None:
    assert move_line(record(action, before, after)) == expected
