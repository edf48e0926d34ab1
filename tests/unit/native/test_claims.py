"""Claims, target resolution, override parsing and the RAPI mapping (firmware.md §7.3, §7.4, §3.4)."""

from __future__ import annotations

from typing import Any

import pytest
from openevse_sim.claims import (
    CLIENT_LOADSHARING,
    CLIENT_MANUAL,
    CLIENT_SHAPER,
    MAX_CLAIMS,
    PRIORITY_API,
    PRIORITY_LIMIT,
    PRIORITY_MANUAL,
    PRIORITY_SAFETY,
    ClaimError,
    ClaimProperties,
    ClaimsTable,
    override_from_json,
    shaper_claim,
    toggle,
)

CP = ClaimProperties


def test_constants() -> None:
    assert (CLIENT_MANUAL, CLIENT_SHAPER, CLIENT_LOADSHARING) == (65537, 65548, 65550)
    assert (PRIORITY_API, PRIORITY_MANUAL, PRIORITY_LIMIT, PRIORITY_SAFETY) == (500, 1000, 1100, 5000)


# --- parsing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, CP()),
        ({"state": "active"}, CP(state="active")),
        ({"state": "disabled", "auto_release": True}, CP(state="disabled", auto_release=True)),
        ({"charge_current": 16, "max_current": 24.9}, CP(charge_current=16, max_current=24)),
        ({"charge_current": 0, "max_current": 80}, CP(charge_current=0, max_current=80)),
        ({"state": "clear", "charge_current": "clear", "max_current": "clear"}, CP()),
        ({"max_current": 10, "energy_limit": 5, "whatever": "x"}, CP(max_current=10)),
        ('{"state":"disabled","max_current":12}', CP(state="disabled", max_current=12)),
        (b'{"charge_current":7.99}', CP(charge_current=7)),
    ],
)
def test_claim_from_json_good(body: object, expected: ClaimProperties) -> None:
    assert ClaimProperties.from_json(body) == expected


BAD_BODIES = [
    pytest.param("{not json", id="not-json"),
    pytest.param(b"\xff\xfe", id="not-utf8"),
    pytest.param("[]", id="array"),
    pytest.param(5, id="number"),
    pytest.param(None, id="null"),
    pytest.param({"state": "paused"}, id="unknown-state"),
    pytest.param({"state": None}, id="null-state"),
    pytest.param({"state": 1}, id="numeric-state"),
    pytest.param({"charge_current": "16"}, id="current-as-text"),
    pytest.param({"charge_current": True}, id="current-as-bool"),
    pytest.param({"charge_current": None}, id="current-null"),
    pytest.param({"charge_current": -1}, id="current-negative"),
    pytest.param({"max_current": 80.5}, id="current-above-80"),
    pytest.param('{"max_current": NaN}', id="current-nan"),
    pytest.param({"auto_release": "yes"}, id="auto-release-text"),
    pytest.param({"auto_release": 1}, id="auto-release-int"),
]


@pytest.mark.parametrize("body", BAD_BODIES)
def test_claim_from_json_bad(body: object) -> None:
    with pytest.raises(ClaimError) as err:
        ClaimProperties.from_json(body)
    assert str(err.value) == "Could not parse JSON"
    assert err.value.detail != ""


@pytest.mark.parametrize("body", BAD_BODIES)
def test_override_from_json_bad(body: object) -> None:
    with pytest.raises(ClaimError) as err:
        override_from_json(body)
    assert str(err.value) == "Failed to parse JSON"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("{}", CP(auto_release=True)),
        ({"state": "disabled"}, CP(state="disabled", auto_release=True)),
        ({"state": "active", "auto_release": False}, CP(state="active", auto_release=False)),
        (
            {"state": "active", "charge_current": 10, "max_current": 20, "auto_release": True},
            CP("active", 10, 20, True),
        ),
    ],
)
def test_override_from_json_good(body: object, expected: ClaimProperties) -> None:
    assert override_from_json(body) == expected


@pytest.mark.parametrize(
    ("props", "expected"),
    [
        (CP(), {"auto_release": False}),
        (CP(state="disabled"), {"state": "disabled", "auto_release": False}),
        (
            CP("active", 10, 20, True),
            {"state": "active", "charge_current": 10, "max_current": 20, "auto_release": True},
        ),
        (CP(max_current=0), {"max_current": 0, "auto_release": False}),
    ],
)
def test_properties_to_json(props: ClaimProperties, expected: dict[str, Any]) -> None:
    assert props.to_json() == expected
    assert list(props.to_json()) == list(expected)


@pytest.mark.parametrize(
    ("current", "target_state", "expected"),
    [
        (None, "active", CP(state="disabled", auto_release=True)),
        (None, "disabled", CP(state="active", auto_release=True)),
        (CP(state="disabled", auto_release=True), "disabled", None),
        (CP(charge_current=10), "active", None),
    ],
)
def test_toggle(current: ClaimProperties | None, target_state: str, expected: ClaimProperties | None) -> None:
    assert toggle(current, target_state) == expected


@pytest.mark.parametrize(
    ("limit", "evse_min", "force", "expected"),
    [
        (16.7, 6, False, CP(max_current=16)),
        (6.0, 6, False, CP(max_current=6)),
        (5.9, 6, False, CP(state="disabled", max_current=5)),
        (0.0, 6, False, CP(state="disabled", max_current=0)),
        (0.0, 6, True, CP(state="disabled", max_current=0)),
        (20.0, 6, True, CP(state="disabled", max_current=20)),
        (-3.0, 6, False, CP(state="disabled", max_current=0)),
    ],
)
def test_shaper_claim(limit: float, evse_min: int, force: bool, expected: ClaimProperties) -> None:
    assert shaper_claim(limit, evse_min, force_disabled=force) == expected


# --- the table -----------------------------------------------------------------------


def test_empty_table() -> None:
    t = ClaimsTable()
    assert t.list() == []
    assert t.get(CLIENT_MANUAL) is None
    assert t.release(CLIENT_MANUAL) is False
    assert t.target() == {"properties": {"state": "active", "auto_release": False}, "claims": {}}
    assert (t.version, t.override_version) == (0, 0)


def test_set_get_list_release() -> None:
    t = ClaimsTable()
    assert t.set(CLIENT_MANUAL, PRIORITY_MANUAL, CP(state="disabled", auto_release=True)) is True
    assert t.set(CLIENT_SHAPER, PRIORITY_SAFETY, CP(max_current=10)) is True
    assert t.list() == [
        {"client": 65537, "priority": 1000, "state": "disabled", "auto_release": True},
        {"client": 65548, "priority": 5000, "max_current": 10, "auto_release": False},
    ]
    assert t.get(CLIENT_SHAPER) == {"priority": 5000, "max_current": 10, "auto_release": False}
    assert t.properties(CLIENT_MANUAL) == CP(state="disabled", auto_release=True)
    assert t.release(CLIENT_MANUAL) is True
    assert t.get(CLIENT_MANUAL) is None
    assert t.list() == [{"client": 65548, "priority": 5000, "max_current": 10, "auto_release": False}]


def test_versions_count_changes_only() -> None:
    t = ClaimsTable()
    steps: list[tuple[str, tuple[int, int]]] = []

    t.set(CLIENT_MANUAL, PRIORITY_MANUAL, CP(state="disabled"))
    steps.append(("new manual", (t.version, t.override_version)))
    t.set(CLIENT_MANUAL, PRIORITY_MANUAL, CP(state="disabled"))
    steps.append(("same again", (t.version, t.override_version)))
    t.set(CLIENT_MANUAL, PRIORITY_MANUAL, CP(state="active"))
    steps.append(("changed", (t.version, t.override_version)))
    t.set(CLIENT_SHAPER, PRIORITY_SAFETY, CP(max_current=6))
    steps.append(("shaper", (t.version, t.override_version)))
    t.set(CLIENT_SHAPER, PRIORITY_LIMIT, CP(max_current=6))
    steps.append(("priority changed", (t.version, t.override_version)))
    t.release(CLIENT_SHAPER)
    steps.append(("release shaper", (t.version, t.override_version)))
    t.release(CLIENT_SHAPER)
    steps.append(("release missing", (t.version, t.override_version)))
    t.release(CLIENT_MANUAL)
    steps.append(("release manual", (t.version, t.override_version)))

    assert steps == [
        ("new manual", (1, 1)),
        ("same again", (1, 1)),
        ("changed", (2, 2)),
        ("shaper", (3, 2)),
        ("priority changed", (4, 2)),
        ("release shaper", (5, 2)),
        ("release missing", (5, 2)),
        ("release manual", (6, 3)),
    ]


def test_version_wraps_at_256() -> None:
    t = ClaimsTable()
    for i in range(255):
        t.set(CLIENT_SHAPER, PRIORITY_SAFETY, CP(max_current=i % 2))  # every call a change
    assert t.version == 255
    t.set(CLIENT_SHAPER, PRIORITY_SAFETY, CP(max_current=7))
    assert t.version == 0
    t.set(CLIENT_MANUAL, PRIORITY_MANUAL, CP(state="active"))
    assert (t.version, t.override_version) == (1, 1)


def test_table_full_and_slot_reuse() -> None:
    t = ClaimsTable()
    for client in range(1, MAX_CLAIMS + 1):
        assert t.set(client, PRIORITY_API, CP(max_current=client)) is True
    assert t.set(99, PRIORITY_API, CP(max_current=1)) is False
    assert t.version == MAX_CLAIMS
    assert t.set(3, PRIORITY_API, CP(max_current=30)) is True  # existing client still updates
    assert t.release(2) is True
    assert t.set(99, PRIORITY_API, CP(max_current=1)) is True
    assert [c["client"] for c in t.list()] == [1, 99, 3, 4, 5, 6, 7, 8, 9, 10]


# --- target resolution ---------------------------------------------------------------

Claims = list[tuple[int, int, ClaimProperties]]


def table_of(claims: Claims) -> ClaimsTable:
    t = ClaimsTable()
    for client, prio, props in claims:
        assert t.set(client, prio, props)
    return t


TARGET_CASES = [
    pytest.param(
        [(CLIENT_MANUAL, PRIORITY_MANUAL, CP(state="disabled", auto_release=True))],
        {
            "properties": {"state": "disabled", "auto_release": False},
            "claims": {"state": 65537},
        },
        id="manual-pause",
    ),
    pytest.param(
        [
            (CLIENT_MANUAL, PRIORITY_MANUAL, CP("active", 20, 24, True)),
            (CLIENT_SHAPER, PRIORITY_SAFETY, CP(max_current=10)),
        ],
        {
            "properties": {"state": "active", "charge_current": 20, "max_current": 10, "auto_release": False},
            "claims": {"state": 65537, "charge_current": 65537, "max_current": 65548},
        },
        id="shaper-limit-outranks-manual",
    ),
    pytest.param(
        [
            (CLIENT_MANUAL, PRIORITY_MANUAL, CP(state="active")),
            (CLIENT_SHAPER, PRIORITY_SAFETY, CP(state="disabled", max_current=0)),
        ],
        {
            "properties": {"state": "disabled", "max_current": 0, "auto_release": False},
            "claims": {"state": 65548, "max_current": 65548},
        },
        id="shaper-disable-outranks-manual-active",
    ),
    pytest.param(
        [(100, PRIORITY_API, CP(charge_current=10)), (200, PRIORITY_API, CP(charge_current=20))],
        {
            "properties": {"state": "active", "charge_current": 10, "auto_release": False},
            "claims": {"charge_current": 100},
        },
        id="equal-priority-older-slot-wins",
    ),
    pytest.param(
        [(100, 0, CP(state="disabled", max_current=6))],
        {"properties": {"state": "active", "auto_release": False}, "claims": {}},
        id="priority-zero-never-wins",
    ),
    pytest.param(
        [(100, PRIORITY_API, CP(max_current=12)), (CLIENT_MANUAL, PRIORITY_MANUAL, CP(auto_release=True))],
        {
            "properties": {"state": "active", "max_current": 12, "auto_release": False},
            "claims": {"max_current": 100},
        },
        id="claim-setting-nothing-owns-nothing",
    ),
]


@pytest.mark.parametrize(("claims", "expected"), TARGET_CASES)
def test_target(claims: Claims, expected: dict[str, Any]) -> None:
    assert table_of(claims).target() == expected


def test_target_follows_release() -> None:
    t = table_of(
        [
            (CLIENT_MANUAL, PRIORITY_MANUAL, CP(state="disabled", auto_release=True)),
            (CLIENT_SHAPER, PRIORITY_SAFETY, CP(max_current=10)),
        ]
    )
    t.release(CLIENT_SHAPER)
    assert t.target() == {
        "properties": {"state": "disabled", "auto_release": False},
        "claims": {"state": 65537},
    }


def test_release_auto_release() -> None:
    t = table_of(
        [
            (CLIENT_MANUAL, PRIORITY_MANUAL, CP(state="disabled", auto_release=True)),
            (CLIENT_SHAPER, PRIORITY_SAFETY, CP(max_current=10)),
            (300, PRIORITY_API, CP(charge_current=8, auto_release=True)),
        ]
    )
    version = t.version
    assert t.release_auto_release() == [CLIENT_MANUAL, 300]
    assert [c["client"] for c in t.list()] == [CLIENT_SHAPER]
    assert t.version == version


# --- RAPI mapping --------------------------------------------------------------------

EVSE_CASES = [
    pytest.param([], {}, ["$FE", "$SC 32 V"], id="no-claims-full-pilot"),
    pytest.param(
        [(CLIENT_MANUAL, PRIORITY_MANUAL, CP(state="disabled"))], {}, ["$FS", "$SC 32 V"], id="pause-sleeps"
    ),
    pytest.param(
        [(CLIENT_MANUAL, PRIORITY_MANUAL, CP(state="disabled"))],
        {"pause_uses_disabled": True},
        ["$FD", "$SC 32 V"],
        id="pause-uses-disabled",
    ),
    pytest.param(
        [
            (CLIENT_MANUAL, PRIORITY_MANUAL, CP(charge_current=20)),
            (CLIENT_SHAPER, PRIORITY_SAFETY, CP(max_current=13)),
        ],
        {},
        ["$FE", "$SC 13 V"],
        id="min-of-charge-and-max",
    ),
    pytest.param(
        [
            (CLIENT_MANUAL, PRIORITY_MANUAL, CP(charge_current=12)),
            (CLIENT_SHAPER, PRIORITY_SAFETY, CP(max_current=30)),
        ],
        {},
        ["$FE", "$SC 12 V"],
        id="charge-below-max",
    ),
    pytest.param(
        [(CLIENT_MANUAL, PRIORITY_MANUAL, CP(charge_current=50))],
        {},
        ["$FE", "$SC 32 V"],
        id="clamped-to-evse-max",
    ),
    pytest.param(
        [(100, PRIORITY_API, CP(max_current=3))],
        {},
        ["$FE", "$SC 6 V"],
        id="limit-below-min-raised-not-paused",
    ),
    pytest.param(
        [(CLIENT_SHAPER, PRIORITY_SAFETY, shaper_claim(3.5, 6))],
        {},
        ["$FS", "$SC 6 V"],
        id="shaper-below-min-sleeps",
    ),
    pytest.param(
        [(CLIENT_SHAPER, PRIORITY_SAFETY, shaper_claim(16.9, 6))],
        {"evse_state": "active", "pilot": 32},
        ["$SC 16 V"],
        id="only-the-pilot-changes",
    ),
    pytest.param(
        [(CLIENT_SHAPER, PRIORITY_SAFETY, shaper_claim(16.9, 6))],
        {"evse_state": "active", "pilot": 16},
        [],
        id="nothing-to-change",
    ),
    pytest.param(
        [(CLIENT_SHAPER, PRIORITY_SAFETY, shaper_claim(0, 6, force_disabled=True))],
        {"evse_state": "active", "pilot": 6},
        ["$FS"],
        id="failsafe-disable-only-state",
    ),
    pytest.param(
        [],
        {"evse_state": "disabled", "pilot": 32},
        ["$FE"],
        id="released-pause-wakes",
    ),
]


@pytest.mark.parametrize(("claims", "kwargs", "expected"), EVSE_CASES)
def test_evse_commands(claims: Claims, kwargs: dict[str, Any], expected: list[str]) -> None:
    assert table_of(claims).evse_commands(6, 32, **kwargs) == expected


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        ([], 32),
        ([(CLIENT_SHAPER, PRIORITY_SAFETY, CP(max_current=10))], 10),
        (
            [
                (CLIENT_MANUAL, PRIORITY_MANUAL, CP(charge_current=8)),
                (CLIENT_SHAPER, PRIORITY_SAFETY, CP(max_current=10)),
            ],
            8,
        ),
        ([(CLIENT_SHAPER, PRIORITY_SAFETY, CP(max_current=0))], 6),
    ],
)
def test_target_pilot(claims: Claims, expected: int) -> None:
    assert table_of(claims).resolve().pilot(6, 32) == expected
