"""`/status` follows the EVSE over a real socat PTY and our emulator (firmware.md §6, §7.1); `/ws`."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import websocket

from tests.native.conftest import EvseRig, Sim, poll


def status(sim: Sim) -> dict[str, Any]:
    doc = sim.get("/status").json()
    assert isinstance(doc, dict)
    return doc


def test_status_reflects_the_evse(
    sim_factory: Callable[..., Sim], evse_factory: Callable[[str], EvseRig]
) -> None:
    rig = evse_factory("a")
    sim = sim_factory("a", rapi=str(rig.pty))
    doc = poll(lambda: (d := status(sim))["state"] != 0 and d, 10, "state != 0 (first $GS)")
    assert doc["state"] == 1
    assert doc["rapi_connected"] == 1
    assert doc["evse_connected"] == 1
    assert doc["vehicle"] == 0
    assert doc["pilot"] > 0
    assert doc["comm_success"] >= 1
    config = sim.get("/config").json()
    assert config["firmware"]
    assert config["evse_serial"]

    assert rig.control("/api/ev/connect").status_code == 200
    doc = poll(lambda: (d := status(sim))["vehicle"] == 1 and d, 10, "vehicle 1 after $AT")
    assert doc["state"] == 2


def test_ws_sends_status_then_changes_and_answers_ping(
    sim_factory: Callable[..., Sim], evse_factory: Callable[[str], EvseRig]
) -> None:
    rig = evse_factory("a")
    sim = sim_factory("a", rapi=str(rig.pty))
    poll(lambda: status(sim)["state"] != 0, 10, "EVSE link up")
    sock = websocket.create_connection(f"ws://127.0.0.1:{sim.port}/ws", timeout=10)
    try:
        first = json.loads(sock.recv())
        assert {"amp", "voltage", "pilot", "state", "vehicle"} <= set(first)
        assert first["state"] == 1
        sock.send(json.dumps({"ping": 1}))
        assert rig.control("/api/ev/connect").status_code == 200
        seen: list[dict[str, Any]] = []

        def got(pred: Callable[[dict[str, Any]], bool]) -> bool:
            seen.append(json.loads(sock.recv()))
            return any(pred(e) for e in seen)

        poll(lambda: got(lambda e: e == {"pong": 1}), 10, "pong")
        poll(lambda: got(lambda e: e.get("vehicle") == 1), 10, "vehicle event")
        change = next(e for e in seen if e.get("vehicle") == 1)
        assert change.get("state") == 2
        assert len(change) < len(first)  # a partial event, not the whole document
    finally:
        sock.close()


def test_without_pty_the_firmware_keeps_running(sim_factory: Callable[..., Sim]) -> None:
    sim = sim_factory("a")
    doc = status(sim)
    assert doc["state"] == 0
    assert doc["rapi_connected"] == 0
    assert "Failed to open PTY port:" in sim.stderr.read_text()
    assert sim.get("/loadsharing/peers").status_code == 200


def test_claim_seam_sends_fs_fe_and_volatile_pilot(evse_factory: Callable[[str], EvseRig]) -> None:
    """`Evse.apply_target` (the hook the claims module will call) over a real PTY (§6.2)."""
    import asyncio

    from openevse_sim.evse import Evse
    from openevse_sim.rapi import RapiClient

    rig = evse_factory("a")

    async def scenario() -> tuple[int, int, int, bool]:
        box: list[Evse] = []
        rapi = RapiClient(str(rig.pty), lambda tokens: box[0].handle_event(tokens))
        evse = Evse(rapi, lambda changes: None, (5, 6))
        box.append(evse)
        assert rapi.open() is None
        evse.start()
        try:
            deadline = asyncio.get_running_loop().time() + 10
            while not evse.have_status:
                assert asyncio.get_running_loop().time() < deadline, "no $GS reply"
                await asyncio.sleep(0.05)
            assert await evse.apply_target("disabled", None)
            while evse.state != 254:
                assert asyncio.get_running_loop().time() < deadline + 10, "no sleep state"
                await asyncio.sleep(0.05)
            slept = evse.state
            assert await evse.apply_target("active", 10)
            while evse.state == 254:
                assert asyncio.get_running_loop().time() < deadline + 20, "still asleep"
                await asyncio.sleep(0.05)
            clamped = await evse.apply_target(None, 200)  # above hardware max: $NK <clamped>
            return slept, evse.state, evse.pilot, clamped
        finally:
            await evse.stop()
            rapi.close()

    slept, awake, pilot, clamped_ok = asyncio.run(scenario())
    assert slept == 254
    assert awake == 1
    assert pilot == 80  # the emulator's hardware max, reported by $NK
    assert clamped_ok is False


def test_status_post_live_inputs_and_405(sim_factory: Callable[..., Sim]) -> None:
    import requests

    sim = sim_factory("a")
    response = sim.post("/status", {"voltage": 230, "solar": 1200, "grid_ie": -300, "battery_level": 50})
    assert (response.status_code, response.json()) == (200, {"msg": "done"})
    doc = status(sim)
    assert (doc["voltage"], doc["solar"], doc["grid_ie"]) == (230.0, 1200, -300)
    assert "battery_level" not in doc  # only with vehicle_data_src 3 (§7.1)
    assert sim.post("/config", {"vehicle_data_src": 3}).status_code == 200
    assert sim.post("/status", {"battery_level": 50}).status_code == 200
    assert status(sim)["battery_level"] == 50
    assert sim.post("/status", data=b"{").json() == {"msg": "Could not parse JSON"}
    for method in ("PUT", "DELETE", "OPTIONS"):
        other = requests.request(method, sim.base + "/status", timeout=5)
        assert (other.status_code, other.json()) == (405, {"msg": "Method not allowed"})
