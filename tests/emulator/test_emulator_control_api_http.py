"""The control API over real HTTP (evse.md §6): upstream paths and JSON, 400/404/405, no crash."""

from __future__ import annotations

import socket

import pytest
import requests


def test_readiness_probe_and_shapes(emulator) -> None:
    r = emulator.get("/api/status")
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json"
    body = r.json()
    assert body["evse"]["state"] == 1
    assert body["evse"]["state_name"] == "not_connected"
    assert body["ev"]["connected"] is False
    assert emulator.get("/api/evse/version").json() == {"firmware": "8.2.2", "protocol": "5.2.1"}


def test_driving_the_car_and_the_panel(emulator) -> None:
    assert emulator.post("/api/ev/connect").json() == {"success": True}
    assert emulator.post("/api/ev/max_rate", {"amps": 20}).json() == {"success": True}
    assert emulator.post("/api/ev/request_charge").json() == {"success": True}
    ev = emulator.get("/api/ev/status").json()
    assert ev["requesting_charge"] is True
    assert ev["actual_current"] == 20
    assert emulator.post("/api/evse/current", {"amps": 10}).json() == {"success": True}
    assert emulator.get("/api/evse/status").json()["actual_current"] == 10
    assert emulator.post("/api/evse/disable").json() == {"success": True}
    assert emulator.get("/api/evse/status").json()["state"] == 0xFE
    assert emulator.post("/api/evse/enable").json() == {"success": True}
    assert emulator.get("/api/evse/status").json()["state"] == 3
    assert emulator.post("/api/evse/service_level", {"level": "L1"}).json() == {"success": True}
    assert emulator.get("/api/evse/status").json()["voltage"] == 120000
    assert emulator.post("/api/ev/soc", {"soc": 100}).json() == {"success": True}
    assert emulator.get("/api/evse/status").json()["state"] == 2
    assert emulator.post("/api/errors/trigger", {"error": "stuck_relay"}).json() == {"success": True}
    errors = emulator.get("/api/errors/status").json()
    assert errors["error_counts"]["stuck_relay"] == 1
    assert errors["active"] == ["stuck_relay"]
    assert emulator.post("/api/errors/clear").json() == {"success": True}
    assert emulator.post("/api/ev/stop_charge").json() == {"success": True}
    assert emulator.post("/api/ev/disconnect").json() == {"success": True}
    assert emulator.post("/api/evse/reset").json() == {"success": True}
    assert emulator.get("/api/evse/status").json()["state"] == 1


@pytest.mark.parametrize(
    ("path", "data"),
    [
        ("/api/evse/current", b"{not json"),
        ("/api/evse/current", b'"16"'),
        ("/api/evse/current", b'{"amps": "16"}'),
        ("/api/evse/current", b'{"amps": 5}'),
        ("/api/evse/current", b'{"amps": 1e9}'),
        ("/api/evse/current", b"{}"),
        ("/api/evse/current", b""),
        ("/api/evse/service_level", b'{"level": "L9"}'),
        ("/api/ev/soc", b'{"soc": -1}'),
        ("/api/ev/soc", b'{"soc": [50]}'),
        ("/api/ev/max_rate", b'{"rate": 10}'),
        ("/api/errors/trigger", b'{"error": null}'),
        ("/api/errors/trigger", b"\xff\x00\x01"),
    ],
)
def test_bad_bodies_get_400_json(emulator, path: str, data: bytes) -> None:
    r = requests.post(emulator.web + path, data=data, headers={"Content-Type": "application/json"}, timeout=5)
    assert r.status_code == 400, r.text
    assert isinstance(r.json()["error"], str)
    assert emulator.get("/api/status").status_code == 200  # still serving


def test_unknown_path_404_wrong_method_405(emulator) -> None:
    r = emulator.get("/api/does/not/exist")
    assert r.status_code == 404
    assert "error" in r.json()
    r = emulator.get("/api/ev/connect")
    assert r.status_code == 405
    assert r.headers["Allow"] == "POST"
    assert "error" in r.json()
    for method in ("PUT", "DELETE", "PATCH"):
        r = requests.request(method, emulator.web + "/api/status", timeout=5)
        assert r.status_code == 405, method


def test_garbage_on_the_socket_does_not_hurt(emulator) -> None:
    port = int(emulator.ready["web_port"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"\x00\x01garbage\r\n\r\n")
        reply = s.recv(4096)
    assert reply.startswith(b"HTTP/1.1 400") or reply.startswith(b"HTTP/1.0 400"), reply
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"POST /api/evse/current HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n")
        assert s.recv(4096).split(b"\r\n")[0].endswith(b"400 Bad Request")
    assert emulator.get("/api/status").status_code == 200
