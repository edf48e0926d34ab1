"""Member failsafe, failsafe modes, the controller's offline reservation, and the §4.3 rules
(firmware.md §3.4, §4.3, §8.3, §8.4), on real stand-ins with emulators behind socat."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import websocket

from tests.native.conftest import EvseRig, Sim, free_port, poll

SHAPER = 65548
MANUAL = 65537
HEARTBEAT = 5
Unit = tuple[Sim, EvseRig]


def shaper_claim(sim: Sim) -> dict[str, Any] | None:
    response = sim.get(f"/claims/{SHAPER}")
    return response.json() if response.status_code == 200 else None


def member_config(controller_host: str, **extra: Any) -> dict[str, Any]:
    return {
        "loadsharing_enabled": True,
        "loadsharing_role": "member",
        "loadsharing_controller_host": controller_host,
        "loadsharing_heartbeat_timeout": HEARTBEAT,
        "loadsharing_group_max_current": 32,
        "loadsharing_failsafe_safe_current": 6,
        **extra,
    }


def charging_unit(unit_factory: Callable[..., Unit], name: str = "m", **kw: Any) -> Unit:
    sim, rig = unit_factory(name, **kw)
    rig.plug_in_and_charge()
    poll(lambda: sim.get("/status").json()["state"] == 3, 15, "charging")
    poll(lambda: rig.evse()["actual_current"] > 6, 10, "car drawing above the failsafe current")
    return sim, rig


def test_member_failsafe_caps_a_32_a_manual_override(unit_factory: Callable[..., Unit]) -> None:
    """§8.4 `test_member_failsafe_places_claim_and_caps_override`, asserted end to end."""
    sim, rig = charging_unit(unit_factory)
    unreachable = f"localhost:{free_port()}"
    assert sim.post("/config", member_config(unreachable)).status_code == 200
    poll(lambda: sim.ls_status()["failsafe_active"] is True, HEARTBEAT + 2, "failsafe")
    claims = poll(lambda: [c for c in sim.get("/claims").json() if c["client"] == SHAPER], 5, "shaper claim")
    assert claims == [{"client": SHAPER, "priority": 5000, "max_current": 6, "auto_release": False}]

    override = {"state": "active", "charge_current": 32, "max_current": 32}
    assert sim.post("/override", override).status_code == 201
    target = sim.get("/claims/target").json()
    assert target["properties"]["max_current"] == 6
    assert target["claims"]["max_current"] == SHAPER
    assert target["claims"]["charge_current"] == MANUAL
    assert [c["client"] for c in sim.get("/claims").json()] == [SHAPER, MANUAL]
    poll(lambda: rig.evse()["current_capacity"] == 6, 10, "emulator pilot 6 A")
    poll(lambda: rig.evse()["actual_current"] == 6.0, 10, "car draws 6 A")
    doc = sim.get("/status").json()
    assert (doc["pilot"], doc["shaper"], doc["shaper_cur"], doc["manual_override"]) == (6, 1, 6, 1)


def test_allocation_frame_lifts_failsafe_until_the_heartbeat_lapses(
    unit_factory: Callable[..., Unit],
) -> None:
    sim, rig = charging_unit(unit_factory)
    assert sim.post("/config", member_config(f"localhost:{free_port()}")).status_code == 200
    poll(
        lambda: shaper_claim(sim) == {"priority": 5000, "max_current": 6, "auto_release": False},
        5,
        "failsafe",
    )

    sock = websocket.create_connection(f"ws://127.0.0.1:{sim.port}/ws", timeout=10)
    try:
        sock.send(json.dumps({"loadsharing": {"target_current": 20.7, "reason": "equal_share"}}))
        sent = time.monotonic()
        poll(lambda: sim.ls_status()["failsafe_active"] is False, 5, "allocation accepted")
        assert shaper_claim(sim) == {"priority": 5000, "max_current": 20, "auto_release": False}
        poll(lambda: rig.evse()["actual_current"] == 20.0, 10, "car draws floor(20.7) A")
        # No further frames: failsafe again once the last is older than the heartbeat timeout.
        poll(
            lambda: sim.ls_status()["failsafe_active"] is True, HEARTBEAT + 3, "failsafe after the heartbeat"
        )
        assert time.monotonic() - sent > HEARTBEAT
        poll(
            lambda: shaper_claim(sim) == {"priority": 5000, "max_current": 6, "auto_release": False}, 5, "6 A"
        )
        poll(lambda: rig.evse()["current_capacity"] == 6, 10, "emulator pilot back to 6 A")
    finally:
        sock.close()


def test_frames_are_ignored_unless_member(sim_factory: Callable[..., Sim]) -> None:
    sim = sim_factory("x")
    sock = websocket.create_connection(f"ws://127.0.0.1:{sim.port}/ws", timeout=10)
    try:
        sock.send(json.dumps({"loadsharing": {"target_current": 10, "reason": "equal_share"}}))
        sock.send(json.dumps({"ping": 7}))  # frames are handled in order: the pong follows the frame
        poll(lambda: json.loads(sock.recv()) == {"pong": 1}, 10, "pong")
    finally:
        sock.close()
    assert sim.get("/claims").json() == []
    assert sim.ls_status()["failsafe_active"] is False


def test_disable_mode_stops_charging_and_disabling_clears_it(unit_factory: Callable[..., Unit]) -> None:
    sim, rig = charging_unit(unit_factory)
    body = member_config(f"localhost:{free_port()}", loadsharing_failsafe_mode="disable")
    assert sim.post("/config", body).status_code == 200
    poll(lambda: rig.evse()["state"] == 254, 10, "emulator asleep ($FS)")
    evse = rig.evse()
    assert evse["actual_current"] == 0.0
    assert evse["vflags"] & 0x0040 == 0  # relay open
    assert evse["vflags"] & 0x0100  # the car is still plugged in
    poll(lambda: sim.get("/status").json()["state"] == 254, 10, "/status state 254")
    assert shaper_claim(sim) == {
        "priority": 5000,
        "state": "disabled",
        "max_current": 0,
        "auto_release": False,
    }

    # loadsharing_enabled=false clears the limit (the role key passes the member lockout).
    off = sim.post("/config", {"loadsharing_enabled": False, "loadsharing_role": "member"})
    assert off.status_code == 200
    poll(lambda: shaper_claim(sim) is None, 5, "shaper claim released")
    poll(lambda: rig.evse()["state"] == 3, 10, "charging again ($FE)")
    assert sim.ls_status()["failsafe_active"] is False


def test_controller_reserves_for_an_offline_member_or_disables_all(unit_factory: Callable[..., Unit]) -> None:
    sim, rig = charging_unit(unit_factory, "c", env={"OPENEVSE_SIM_ALLOCATION_PERIOD": "1"})
    offline = f"127.0.0.1:{free_port()}"
    assert sim.post("/loadsharing/peers", {"host": offline, "reciprocal": False}).status_code == 200
    controller = {
        "loadsharing_enabled": True,
        "loadsharing_role": "controller",
        "loadsharing_group_max_current": 32,
    }
    assert sim.post("/config", controller).status_code == 200
    me = f"{sim.hostname}.local"

    def rows() -> list[dict[str, Any]]:
        return list(sim.ls_status()["allocations"])

    expect = [
        {"id": me, "target_current": 26.0, "reason": "equal_share"},  # 32 - 6 A reserved
        {"id": offline, "target_current": 0.0, "reason": "offline"},
    ]
    poll(lambda: rows() == expect, 10, "offline reservation")
    assert sim.ls_status()["failsafe_active"] is True
    poll(lambda: rig.evse()["actual_current"] == 26.0, 10, "car draws 26 A")

    assert sim.post("/config", {"loadsharing_failsafe_mode": "disable"}).status_code == 200
    zero = [
        {"id": me, "target_current": 0.0, "reason": "failsafe_disabled"},
        {"id": offline, "target_current": 0.0, "reason": "failsafe_disabled"},
    ]
    poll(lambda: rows() == zero, 10, "all-zero failsafe_disabled")
    poll(lambda: rig.evse()["state"] == 254, 10, "controller's own EVSE asleep")
    assert rig.evse()["actual_current"] == 0.0


RANGE_ERRORS: list[tuple[dict[str, Any], str]] = [
    ({"loadsharing_group_max_current": -1}, "loadsharing_group_max_current must be >= 0"),
    ({"loadsharing_safety_factor": 1.5}, "loadsharing_safety_factor must be between 0.0 and 1.0"),
    ({"loadsharing_heartbeat_timeout": 4}, "loadsharing_heartbeat_timeout must be between 5 and 600 seconds"),
    (
        {"loadsharing_failsafe_safe_current": 81},
        "loadsharing_failsafe_safe_current must be between 0 and 80 amps",
    ),
    (
        {"loadsharing_failsafe_peer_assumed_current": -0.5},
        "loadsharing_failsafe_peer_assumed_current must be between 0 and 80 amps",
    ),
    ({"loadsharing_failsafe_mode": "off"}, "loadsharing_failsafe_mode must be 'safe_current' or 'disable'"),
    (
        {"loadsharing_group_max_current": 10, "loadsharing_failsafe_safe_current": 32},
        "loadsharing_failsafe_safe_current must not exceed loadsharing_group_max_current",
    ),
]


def test_config_rules_of_4_3(sim_factory: Callable[..., Sim]) -> None:
    sim = sim_factory("r")
    for body, message in RANGE_ERRORS:
        before = sim.get("/config").json()
        response = sim.post("/config", {"loadsharing_group_id": "changed", **body})
        assert (response.status_code, response.json()) == (400, {"msg": message}), body
        assert sim.get("/config").json() == before  # a rejected request changes nothing
    assert sim.post(
        "/config", {"loadsharing_group_max_current": 10, "loadsharing_failsafe_safe_current": 6}
    ).ok
    late = sim.post("/config", {"loadsharing_failsafe_safe_current": 12})  # checked against the stored max
    assert (late.status_code, late.json()["msg"]) == (400, RANGE_ERRORS[-1][1])

    controller = f"localhost:{free_port()}"
    assert sim.post("/loadsharing/peers", {"host": controller, "reciprocal": False}).status_code == 200
    assert sim.post("/config", member_config(controller, loadsharing_group_max_current=10)).status_code == 200
    poll(lambda: shaper_claim(sim) is not None, 5, "member failsafe claim")
    read_only = {"msg": "Load sharing configuration is read-only on members"}
    before = sim.get("/config").json()
    for response in (
        sim.post("/config", {"loadsharing_group_max_current": 40}),
        sim.post("/config", {"loadsharing_enabled": False}),
        sim.post("/loadsharing/peers", {"host": "other.local:8000"}),
        sim.delete(f"/loadsharing/peers/{controller.replace(':', '%3A')}"),
    ):
        assert (response.status_code, response.json()) == (403, read_only)
    assert sim.get("/config").json() == before
    assert [p["host"] for p in sim.peers() if p["joined"]] == [f"{sim.hostname}.local", controller]
    # The controller-push signature passes the lockout (§4.3).
    assert sim.post("/config", {"loadsharing_role": "member", "loadsharing_group_id": "pushed"}).ok
    assert sim.get("/config").json()["loadsharing_group_id"] == "pushed"

    # Leaving the member role: controller entry un-joined, role and host cleared, failsafe cleared.
    assert sim.post("/config", {"loadsharing_role": ""}).status_code == 200
    config = sim.get("/config").json()
    assert (config["loadsharing_role"], config["loadsharing_controller_host"]) == ("", "")
    assert config["loadsharing_enabled"] is True
    assert next(p for p in sim.peers() if p["host"] == controller)["joined"] is False
    assert sim.ls_status()["failsafe_active"] is False
    poll(lambda: shaper_claim(sim) is None, 5, "failsafe limit released")
    assert sim.post("/config", {"loadsharing_group_max_current": 40}).status_code == 200  # no longer locked
