"""A real 3-unit group: controller allocation, member config push, redistribution (firmware.md §3.4, §1.6).

Three stand-ins, each with its own emulator behind socat; the controller's period is shortened
with the stand-in-only `OPENEVSE_SIM_ALLOCATION_PERIOD`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.native.conftest import EvseRig, Sim, poll

FAST = {"OPENEVSE_SIM_ALLOCATION_PERIOD": "1"}
SHAPER = 65548
Unit = tuple[Sim, EvseRig]


def host_key(ctrl: Sim, member: Sim) -> str | None:
    """The controller's host key for a member: `127.0.0.1:<port>` until discovery renames it (§2.4)."""
    for row in ctrl.peers():
        if row["id"] == member.long_id or row["host"] == f"127.0.0.1:{member.port}":
            return str(row["host"])
    return None


def allocation_rows(ctrl: Sim, members: list[Sim]) -> dict[str, dict[str, Any]] | None:
    """Allocation rows keyed "self" / member hostname, or None while a row is missing."""
    rows = {row["id"]: row for row in ctrl.ls_status()["allocations"]}
    out: dict[str, dict[str, Any]] = {}
    own = rows.get(f"{ctrl.hostname}.local")
    if own is None:
        return None
    out["self"] = own
    for member in members:
        key = host_key(ctrl, member)
        if key is None or key not in rows:
            return None
        out[member.hostname] = rows[key]
    return out


def evse_is(rig: EvseRig, key: str, value: object) -> Callable[[], bool]:
    return lambda: bool(rig.evse()[key] == value)


def status_is(sim: Sim, key: str, value: object) -> Callable[[], bool]:
    return lambda: bool(sim.get("/status").json()[key] == value)


def member_of(member: Sim) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        config: dict[str, Any] = member.get("/config").json()
        return config if config["loadsharing_role"] == "member" else None

    return check


def m2_seen_plugged(ctrl: Sim, member: Sim) -> bool:
    key = host_key(ctrl, member)
    row = next((p for p in ctrl.ls_status()["peers"] if p["host"] == key), None)
    status = (row or {}).get("status", {})
    return bool(status.get("vehicle") == 1 and status.get("state") == 254)


def shaper_claim(sim: Sim) -> dict[str, Any] | None:
    response = sim.get(f"/claims/{SHAPER}")
    return response.json() if response.status_code == 200 else None


def test_three_units_share_32_a_equally_then_redistribute(unit_factory: Callable[..., Unit]) -> None:
    ctrl, ctrl_rig = unit_factory("c", env=FAST)
    m1, rig1 = unit_factory("m1", env=FAST)
    m2, rig2 = unit_factory("m2", env=FAST)
    units = [(ctrl, ctrl_rig), (m1, rig1), (m2, rig2)]
    for sim, rig in units:
        rig.plug_in_and_charge()
        poll(status_is(sim, "state", 3), 15, f"{sim.hostname} charging")

    for member in (m1, m2):
        added = ctrl.post("/loadsharing/peers", {"host": f"127.0.0.1:{member.port}", "reciprocal": False})
        assert (added.status_code, added.json()) == (200, {"msg": "done"})
    config = {
        "loadsharing_enabled": True,
        "loadsharing_role": "controller",
        "loadsharing_group_id": "grp",
        "loadsharing_group_max_current": 32,
    }
    assert ctrl.post("/config", config).status_code == 200

    # Members are configured by the controller's push once their socket opens (§3.4).
    for member in (m1, m2):
        pushed = poll(member_of(member), 20, f"{member.hostname} configured as member")
        assert pushed["loadsharing_enabled"] is True
        assert pushed["loadsharing_controller_host"] == f"{ctrl.hostname}.local"
        assert pushed["loadsharing_group_id"] == "grp"
        assert pushed["loadsharing_group_max_current"] == 32

    def equal(expect: dict[str, tuple[float, str]]) -> dict[str, dict[str, Any]] | None:
        rows = allocation_rows(ctrl, [m1, m2])
        if rows is None:
            return None
        ok = all(
            abs(rows[k]["target_current"] - amps) < 0.01 and rows[k]["reason"] == reason
            for k, (amps, reason) in expect.items()
        )
        return rows if ok else None

    share = 32 / 3
    three = {
        "self": (share, "equal_share"),
        m1.hostname: (share, "equal_share"),
        m2.hostname: (share, "equal_share"),
    }
    rows = poll(lambda: equal(three), 20, "equal share of 32 A across three")
    assert sum(r["target_current"] for r in rows.values()) <= 32
    status = ctrl.ls_status()
    assert status["failsafe_active"] is False
    assert status["online_count"] == 3

    for sim, rig in units:
        poll(evse_is(rig, "current_capacity", 10), 15, f"{sim.hostname}: pilot 10 A")
        poll(evse_is(rig, "actual_current", 10.0), 15, f"{sim.hostname}: car draws 10 A")
        claim = shaper_claim(sim)
        assert claim == {"priority": 5000, "max_current": 10, "auto_release": False}
        target = sim.get("/claims/target").json()
        assert target["claims"]["max_current"] == SHAPER
        doc = sim.get("/status").json()
        assert (doc["pilot"], doc["shaper"], doc["shaper_cur"]) == (10, 1, 10)
    for member in (m1, m2):
        assert member.ls_status()["failsafe_active"] is False  # fed by allocation frames
        assert member.ls_status()["allocations"] == []  # only a controller publishes rows

    # Unplugging one car redistributes: 16 A each to the two left, 0 A idle to the third.
    assert rig2.control("/api/ev/disconnect").status_code == 200
    two = {"self": (16.0, "equal_share"), m1.hostname: (16.0, "equal_share"), m2.hostname: (0.0, "idle")}
    poll(lambda: equal(two), 20, "16 A each to the two left")
    for sim, rig in units[:2]:
        poll(evse_is(rig, "actual_current", 16.0), 15, f"{sim.hostname}: car draws 16 A")
        assert rig.evse()["current_capacity"] == 16
    # The idle 0 A allocation is below the EVSE minimum: the member's port is put to sleep (§3.4 (a)).
    poll(lambda: rig2.evse()["state"] == 254, 15, "idle member asleep")
    assert shaper_claim(m2) == {
        "priority": 5000,
        "state": "disabled",
        "max_current": 0,
        "auto_release": False,
    }

    # §3.4 (a), modelled as the firmware has it: a slept port is never "demanding" again (state
    # 254 is excluded), so plugging a car back in leaves it idle. m1's unplug forces a run that
    # must have seen m2's car; the controller then gets the whole budget and m2 stays at 0 A.
    rig2.plug_in_and_charge()
    poll(lambda: m2_seen_plugged(ctrl, m2), 15, "controller sees m2's car on a sleeping port")
    assert rig1.control("/api/ev/disconnect").status_code == 200
    alone = {"self": (32.0, "equal_share"), m1.hostname: (0.0, "idle"), m2.hostname: (0.0, "idle")}
    poll(lambda: equal(alone), 20, "32 A to the controller alone")
    assert rig2.evse()["state"] == 254

    # Removing a member sends it the config reset (§1.4): it leaves the group and drops the limit.
    key = host_key(ctrl, m2)
    assert key is not None
    assert ctrl.delete(f"/loadsharing/peers/{key.replace(':', '%3A')}").status_code == 200
    reset = poll(
        lambda: (c := m2.get("/config").json())["loadsharing_enabled"] is False and c,
        15,
        "config reset on m2",
    )
    assert (reset["loadsharing_role"], reset["loadsharing_controller_host"]) == ("", "")
    poll(lambda: shaper_claim(m2) is None, 10, "m2 shaper claim released")
    poll(lambda: rig2.evse()["state"] != 254, 10, "m2 EVSE enabled again ($FE)")
    assert m2.ls_status()["failsafe_active"] is False
