"""The allocation function over tables of cases (firmware.md §3.4, reasons §1.6)."""

from __future__ import annotations

import pytest
from openevse_sim.allocation import (
    Allocation,
    GroupSettings,
    PeerInput,
    Rotation,
    allocate,
    contenders,
    demanding,
    failsafe_active,
)


def peer(
    pid: str,
    *,
    min_a: float = 6,
    max_a: float = 32,
    prio: int = 0,
    online: bool = True,
    wants: bool = True,
    charging: bool = True,
) -> PeerInput:
    return PeerInput(pid, online, wants, min_a, max_a, prio, charging)


def group(
    max_a: float,
    *,
    safety_factor: float = 1.0,
    failsafe_mode: str = "safe_current",
    failsafe_peer_assumed_current: float = 6.0,
    rotation_interval: float = 1800,
) -> GroupSettings:
    return GroupSettings(
        max_a, safety_factor, failsafe_mode, failsafe_peer_assumed_current, rotation_interval
    )


def rows(result: list[Allocation]) -> list[tuple[str, float, str]]:
    return [(a.id, a.target_current, a.reason) for a in result]


CASES = [
    pytest.param(
        [peer("a"), peer("b")],
        group(32),
        [("a", 16.0, "equal_share"), ("b", 16.0, "equal_share")],
        id="equal-share-two",
    ),
    pytest.param(
        [peer("a"), peer("b"), peer("c")],
        group(32),
        [("a", 10.666, "equal_share"), ("b", 10.666, "equal_share"), ("c", 10.666, "equal_share")],
        id="equal-share-rounded-down-to-mA",
    ),
    pytest.param(
        [peer("a", max_a=10), peer("b")],
        group(40),
        [("a", 10.0, "equal_share"), ("b", 30.0, "equal_share")],
        id="max-cap-redistributes",
    ),
    pytest.param(
        [peer("a", max_a=16), peer("b")],
        group(100),
        [("a", 16.0, "equal_share"), ("b", 32.0, "equal_share")],
        id="everyone-capped-budget-left-over",
    ),
    pytest.param(
        [peer("a"), peer("b", min_a=10)],
        group(20),
        [("a", 8.0, "equal_share"), ("b", 12.0, "equal_share")],
        id="minimums-then-equal-remainder",
    ),
    pytest.param(
        [peer("a", max_a=6), peer("b")],
        group(20),
        [("a", 6.0, "equal_share"), ("b", 14.0, "equal_share")],
        id="member-with-no-headroom",
    ),
    pytest.param(
        [peer("a", min_a=10, max_a=8), peer("b")],
        group(30),
        [("a", 8.0, "equal_share"), ("b", 22.0, "equal_share")],
        id="min-above-max-uses-max",
    ),
    pytest.param(
        [peer("a"), peer("b")],
        group(12),
        [("a", 6.0, "equal_share"), ("b", 6.0, "equal_share")],
        id="exactly-the-minimums",
    ),
    pytest.param(
        [peer("a"), peer("b")],
        group(11.9),
        [("a", 6.0, "min_subset"), ("b", 0.0, "insufficient")],
        id="insufficient-id-order",
    ),
    pytest.param(
        [peer("a", prio=5), peer("b", prio=1)],
        group(10),
        [("a", 0.0, "insufficient"), ("b", 6.0, "min_subset")],
        id="lower-priority-number-wins",
    ),
    pytest.param(
        [peer("a", min_a=8), peer("b", min_a=8, prio=1), peer("c", min_a=2, prio=2)],
        group(10),
        [("a", 8.0, "min_subset"), ("b", 0.0, "insufficient"), ("c", 2.0, "min_subset")],
        id="smaller-minimum-still-fits-later",
    ),
    pytest.param(
        [peer("a"), peer("b", wants=False)],
        group(32),
        [("a", 32.0, "equal_share"), ("b", 0.0, "idle")],
        id="idle-takes-nothing",
    ),
    pytest.param(
        [peer("a", wants=False), peer("b", wants=False)],
        group(32),
        [("a", 0.0, "idle"), ("b", 0.0, "idle")],
        id="nobody-demanding",
    ),
    pytest.param(
        [peer("a", charging=False), peer("b")],
        group(32),
        [("a", 6.0, "connected_min"), ("b", 32.0, "equal_share")],
        id="connected-min-outside-budget",
    ),
    pytest.param(
        [peer("a", charging=False, min_a=8, max_a=7)],
        group(32),
        [("a", 7.0, "connected_min")],
        id="connected-min-never-above-max",
    ),
    pytest.param(
        [peer("a"), peer("b", online=False)],
        group(32),
        [("a", 26.0, "equal_share"), ("b", 0.0, "offline")],
        id="offline-reserves-assumed-current",
    ),
    pytest.param(
        [peer("a"), peer("b", online=False), peer("c", online=False)],
        group(32, failsafe_peer_assumed_current=10.0),
        [("a", 12.0, "equal_share"), ("b", 0.0, "offline"), ("c", 0.0, "offline")],
        id="two-offline-reservations",
    ),
    pytest.param(
        [peer("a"), peer("b", online=False)],
        group(4),
        [("a", 0.0, "insufficient"), ("b", 0.0, "offline")],
        id="reservation-exhausts-budget-never-negative",
    ),
    pytest.param(
        [peer("a", online=False, wants=True)],
        group(32),
        [("a", 0.0, "offline")],
        id="offline-demand-is-ignored",
    ),
    pytest.param(
        [peer("a"), peer("b", online=False), peer("c", wants=False)],
        group(32, failsafe_mode="disable"),
        [("a", 0.0, "failsafe_disabled"), ("b", 0.0, "failsafe_disabled"), ("c", 0.0, "failsafe_disabled")],
        id="failsafe-disable-zeroes-everyone",
    ),
    pytest.param(
        [peer("a"), peer("b")],
        group(32, failsafe_mode="disable"),
        [("a", 16.0, "equal_share"), ("b", 16.0, "equal_share")],
        id="disable-mode-all-online-is-normal",
    ),
    pytest.param([peer("a"), peer("b")], group(0), [], id="group-max-zero-computes-nothing"),
    pytest.param([peer("a")], group(-5), [], id="group-max-negative-computes-nothing"),
    pytest.param([], group(32), [], id="no-members"),
    pytest.param(
        [peer("a"), peer("b")],
        group(40, safety_factor=0.8),
        [("a", 16.0, "equal_share"), ("b", 16.0, "equal_share")],
        id="safety-factor-scales-budget",
    ),
    pytest.param(
        [peer("a"), peer("b")],
        group(20, safety_factor=0.5),
        [("a", 6.0, "min_subset"), ("b", 0.0, "insufficient")],
        id="safety-factor-pushes-below-minimums",
    ),
    pytest.param(
        [peer("c", prio=2), peer("b", prio=1), peer("a", prio=1)],
        group(12),
        [("c", 0.0, "insufficient"), ("b", 6.0, "min_subset"), ("a", 6.0, "min_subset")],
        id="output-keeps-input-order",
    ),
]


@pytest.mark.parametrize(("inputs", "settings", "expected"), CASES)
def test_allocate(
    inputs: list[PeerInput], settings: GroupSettings, expected: list[tuple[str, float, str]]
) -> None:
    assert rows(allocate(inputs, settings)) == expected


def three_equal() -> list[PeerInput]:
    return [peer("a"), peer("b"), peer("c")]


@pytest.mark.parametrize(
    ("offset", "served"),
    [(0, "a"), (1, "b"), (2, "c"), (3, "a"), (7, "b")],
)
def test_rotation_offset_picks_who_is_served(offset: int, served: str) -> None:
    result = allocate(three_equal(), group(10), rotation_offset=offset)
    assert {a.id: a.reason for a in result} == {
        pid: ("min_subset" if pid == served else "insufficient") for pid in "abc"
    }
    assert {a.id: a.target_current for a in result} == {pid: (6.0 if pid == served else 0.0) for pid in "abc"}


@pytest.mark.parametrize(
    ("offset", "expected"),
    [
        (0, [("a", 6.0, "min_subset"), ("b", 6.0, "min_subset"), ("c", 0.0, "insufficient")]),
        (1, [("a", 6.0, "min_subset"), ("b", 0.0, "insufficient"), ("c", 6.0, "min_subset")]),
    ],
)
def test_rotation_stays_within_equal_priority(offset: int, expected: list[tuple[str, float, str]]) -> None:
    inputs = [peer("a", prio=0), peer("b", prio=1), peer("c", prio=1)]
    assert rows(allocate(inputs, group(12), rotation_offset=offset)) == expected


def test_rotation_interval_zero_ignores_offset() -> None:
    result = allocate(three_equal(), group(10, rotation_interval=0), rotation_offset=1)
    assert rows(result) == [("a", 6.0, "min_subset"), ("b", 0.0, "insufficient"), ("c", 0.0, "insufficient")]


def test_rotation_does_not_change_equal_share() -> None:
    assert rows(allocate(three_equal(), group(30), rotation_offset=1)) == [
        ("a", 10.0, "equal_share"),
        ("b", 10.0, "equal_share"),
        ("c", 10.0, "equal_share"),
    ]


@pytest.mark.parametrize(
    ("vehicle", "state", "online", "expected"),
    [
        (1, 3, True, True),
        (1, 2, True, True),
        (1, 255, True, True),
        (1, 254, True, False),
        (1, 0, True, False),
        (0, 3, True, False),
        (0, 1, True, False),
        (1, 3, False, False),
    ],
)
def test_demanding(vehicle: int, state: int, online: bool, expected: bool) -> None:
    assert demanding(vehicle, state, online) is expected


@pytest.mark.parametrize(
    ("inputs", "settings", "expected"),
    [
        ([peer("a"), peer("b", online=False)], group(32), True),
        ([peer("a"), peer("b")], group(32), False),
        ([peer("a"), peer("b", online=False)], group(0), False),
    ],
)
def test_failsafe_active(inputs: list[PeerInput], settings: GroupSettings, expected: bool) -> None:
    assert failsafe_active(inputs, settings) is expected


def test_contenders_counts_online_charging_demanders() -> None:
    inputs = [
        peer("a"),
        peer("b", charging=False),
        peer("c", wants=False),
        peer("d", online=False),
        peer("e"),
    ]
    assert contenders(inputs) == 2


def test_rotation_clock() -> None:
    rot = Rotation()
    assert rot.offset_at(0.0, 1800, 1) == 0  # one contender: clock not started
    assert rot.offset_at(100.0, 1800, 2) == 0  # starts here
    assert rot.offset_at(1899.0, 1800, 2) == 0
    assert rot.offset_at(1900.0, 1800, 2) == 1
    assert rot.offset_at(3699.0, 1800, 3) == 1
    assert rot.offset_at(3700.0, 1800, 3) == 2
    assert rot.offset_at(9999.0, 0, 3) == 2  # interval 0: frozen
    assert rot.offset_at(9999.0, 1800, 1) == 2  # single contender: frozen


def test_group_settings_from_config() -> None:
    cfg = {
        "loadsharing_group_max_current": 48,
        "loadsharing_safety_factor": 0.9,
        "loadsharing_failsafe_mode": "disable",
        "loadsharing_failsafe_peer_assumed_current": 8,
        "loadsharing_rotation_interval": 60,
        "hostname": "x",
    }
    assert GroupSettings.from_config(cfg) == GroupSettings(48.0, 0.9, "disable", 8.0, 60.0)
    assert GroupSettings.from_config({}) == GroupSettings(0.0, 1.0, "safe_current", 6.0, 1800.0)


def test_allocation_json_shapes() -> None:
    a = Allocation("evse-1.local", 16.5, "equal_share")
    assert a.to_json() == {"id": "evse-1.local", "target_current": 16.5, "reason": "equal_share"}
    assert a.ws_frame() == {"loadsharing": {"target_current": 16.5, "reason": "equal_share"}}
