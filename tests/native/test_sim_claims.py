"""`/override` and `/claims` driving a real emulator over socat (firmware.md §7.3, §7.4, §6.2)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import requests

from tests.native.conftest import EvseRig, Sim, poll

MANUAL = 65537
API_CLIENT = 9999


def evse_status(rig: EvseRig) -> dict[str, Any]:
    doc = requests.get(f"http://127.0.0.1:{rig.web_port}/api/evse/status", timeout=5).json()
    assert isinstance(doc, dict)
    return doc


def call(sim: Sim, method: str, path: str, body: Any = None, data: bytes | None = None) -> tuple[int, Any]:
    response = requests.request(
        method, sim.base + path, json=body, data=data, timeout=5, allow_redirects=False
    )
    return response.status_code, response.json() if response.content else None


def test_override_get_post_patch_delete_drive_the_evse(
    unit_factory: Callable[..., tuple[Sim, EvseRig]],
) -> None:
    sim, rig = unit_factory("a")
    assert call(sim, "GET", "/override") == (200, {})
    assert call(sim, "GET", "/claims") == (200, [])
    idle_target = {"properties": {"state": "active", "auto_release": False}, "claims": {}}
    assert call(sim, "GET", "/claims/target") == (200, idle_target)
    before = sim.get("/status").json()
    assert before["manual_override"] == 0

    assert call(sim, "POST", "/override", {"state": "active", "charge_current": 16}) == (
        201,
        {"msg": "Created"},
    )
    assert call(sim, "GET", "/override") == (
        200,
        {"state": "active", "charge_current": 16, "auto_release": True},
    )
    assert call(sim, "GET", "/claims") == (
        200,
        [{"client": MANUAL, "priority": 1000, "state": "active", "charge_current": 16, "auto_release": True}],
    )
    target = call(sim, "GET", "/claims/target")[1]
    assert target["properties"]["charge_current"] == 16
    assert target["claims"] == {"state": MANUAL, "charge_current": MANUAL}
    poll(lambda: evse_status(rig)["current_capacity"] == 16, 10, "emulator pilot 16 ($SC 16 V)")
    status = poll(lambda: (d := sim.get("/status").json())["pilot"] == 16 and d, 10, "/status pilot 16")
    assert status["manual_override"] == 1
    assert status["override_version"] == before["override_version"] + 1
    assert status["claims_version"] == before["claims_version"] + 1

    assert call(sim, "POST", "/override", data=b"{nope") == (400, {"msg": "Failed to parse JSON"})
    assert call(sim, "POST", "/override", {"charge_current": 81}) == (400, {"msg": "Failed to parse JSON"})
    assert call(sim, "GET", "/override")[1]["charge_current"] == 16  # a rejected POST changes nothing

    # PATCH toggles: an override present is released ...
    assert call(sim, "PATCH", "/override") == (200, {"msg": "Updated"})
    assert call(sim, "GET", "/override") == (200, {})
    # ... and without one, a new override opposes the target state: active -> disabled -> $FS.
    assert call(sim, "PATCH", "/override") == (200, {"msg": "Updated"})
    assert call(sim, "GET", "/override") == (200, {"state": "disabled", "auto_release": True})
    poll(lambda: evse_status(rig)["state"] == 254, 10, "emulator asleep ($FS)")
    poll(lambda: sim.get("/status").json()["state"] == 254, 10, "/status state 254")

    assert call(sim, "DELETE", "/override") == (200, {"msg": "Deleted"})
    poll(lambda: evse_status(rig)["state"] == 1, 10, "emulator awake again ($FE)")
    code, body = call(sim, "DELETE", "/override")
    assert code == 500
    assert "release" in body["msg"]
    assert call(sim, "PUT", "/override") == (405, {"msg": "Method not allowed"})


def test_claims_endpoints_and_priorities(
    unit_factory: Callable[..., tuple[Sim, EvseRig]],
) -> None:
    sim, rig = unit_factory("a")
    path = f"/claims/{API_CLIENT}"
    assert call(sim, "GET", path) == (404, {"msg": "Not found"})
    assert call(sim, "POST", path, {"max_current": 10}) == (200, {"msg": "done"})
    assert call(sim, "GET", path) == (200, {"priority": 500, "max_current": 10, "auto_release": False})
    poll(lambda: evse_status(rig)["current_capacity"] == 10, 10, "emulator pilot 10")

    # A manual override (priority 1000) outranks the API claim (500) on the same property.
    assert call(sim, "POST", "/override", {"max_current": 20, "auto_release": False})[0] == 201
    target = call(sim, "GET", "/claims/target")[1]
    assert (target["properties"]["max_current"], target["claims"]["max_current"]) == (20, MANUAL)
    poll(lambda: evse_status(rig)["current_capacity"] == 20, 10, "emulator pilot 20")
    assert [c["client"] for c in call(sim, "GET", "/claims")[1]] == [API_CLIENT, MANUAL]

    assert call(sim, "POST", path, data=b"[") == (400, {"msg": "Could not parse JSON"})
    assert call(sim, "POST", path, {"state": "paused"}) == (400, {"msg": "Could not parse JSON"})
    assert call(sim, "POST", "/claims", {"max_current": 10}) == (405, {"msg": "Method not allowed"})
    assert call(sim, "DELETE", "/claims/target") == (405, {"msg": "Method not allowed"})
    assert call(sim, "GET", "/claims/notanumber") == (404, {"msg": "Not found"})
    assert call(sim, "DELETE", path) == (200, {"msg": "done"})
    assert call(sim, "DELETE", path) == (404, {"msg": "Not found"})
    assert call(sim, "DELETE", "/override") == (200, {"msg": "Deleted"})
    assert call(sim, "GET", "/claims") == (200, [])
    configured = sim.get("/config").json()["max_current_soft"]  # $GC's configured max
    assert configured not in (10, 20)
    poll(lambda: evse_status(rig)["current_capacity"] == configured, 10, "pilot back to the configured max")


def test_unplugging_ends_an_auto_release_override(
    unit_factory: Callable[..., tuple[Sim, EvseRig]],
) -> None:
    sim, rig = unit_factory("a")
    assert rig.control("/api/ev/connect").status_code == 200
    assert rig.control("/api/ev/request_charge").status_code == 200
    poll(lambda: sim.get("/status").json()["state"] == 3, 10, "charging")
    assert call(sim, "POST", "/override", {"charge_current": 12})[0] == 201
    poll(lambda: evse_status(rig)["actual_current"] == 12.0, 10, "the car draws 12 A")
    assert rig.control("/api/ev/disconnect").status_code == 200
    poll(lambda: call(sim, "GET", "/override") == (200, {}), 10, "override released at session end")
    assert sim.get("/status").json()["manual_override"] == 0
