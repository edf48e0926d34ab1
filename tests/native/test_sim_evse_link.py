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
