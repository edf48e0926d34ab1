"""Control API routing and validation without sockets (evse.md §6)."""

from __future__ import annotations

import json

import pytest

from emulator.control_api import ControlApi
from emulator.model import Controller


@pytest.fixture
def api() -> ControlApi:
    return ControlApi(Controller(mcu_id="EMTEST0001"))


def call(api: ControlApi, method: str, path: str, body: object = None) -> tuple[int, dict[str, object]]:
    raw = b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    status, payload, _ = api.dispatch(method, path, raw)
    return status, payload


def test_every_route_answers(api: ControlApi) -> None:
    for path, methods in api.routes.items():
        for method in methods:
            body = {
                "/api/evse/current": {"amps": 16},
                "/api/evse/service_level": {"level": "L2"},
                "/api/ev/soc": {"soc": 80},
                "/api/ev/max_rate": {"amps": 16},
                "/api/errors/trigger": {"error": "gfci"},
            }.get(path)
            status, payload = call(api, method, path, body)
            assert status == 200, (path, payload)


def test_unknown_path_404_and_wrong_method_405(api: ControlApi) -> None:
    assert call(api, "GET", "/api/nope")[0] == 404
    status, payload, headers = api.dispatch("GET", "/api/ev/connect", b"")
    assert status == 405
    assert headers == {"Allow": "POST"}
    assert "error" in payload


def test_trailing_slash_and_query_are_tolerated(api: ControlApi) -> None:
    assert call(api, "GET", "/api/status/")[0] == 200
    assert call(api, "GET", "/api/status?x=1")[0] == 200


@pytest.mark.parametrize(
    ("path", "body", "fragment"),
    [
        ("/api/evse/current", b"not json", "not valid JSON"),
        ("/api/evse/current", b"", "required"),
        ("/api/evse/current", [16], "JSON object"),
        ("/api/evse/current", {}, "missing key 'amps'"),
        ("/api/evse/current", {"amps": "16"}, "must be a number"),
        ("/api/evse/current", {"amps": True}, "must be a number"),
        ("/api/evse/current", {"amps": 16.5}, "whole number"),
        ("/api/evse/current", {"amps": 5}, "6..80"),
        ("/api/evse/current", {"amps": 81}, "6..80"),
        ("/api/evse/current", b'{"amps": NaN}', "finite"),
        ("/api/evse/service_level", {"level": "L3"}, "one of"),
        ("/api/evse/service_level", {"level": 2}, "one of"),
        ("/api/ev/soc", {"soc": 101}, "0..100"),
        ("/api/ev/soc", {"soc": None}, "must be a number"),
        ("/api/ev/max_rate", {"amps": -1}, "0..80"),
        ("/api/errors/trigger", {"error": "meltdown"}, "one of"),
        ("/api/errors/trigger", {"kind": "gfci"}, "missing key 'error'"),
        ("/api/evse/current", b"\xff\xfe", "not valid JSON"),
    ],
)
def test_bad_bodies_are_400_with_a_reason(api: ControlApi, path: str, body: object, fragment: str) -> None:
    status, payload = call(api, "POST", path, body)
    assert status == 400
    assert fragment in str(payload["error"])


def test_enable_refused_while_faulted(api: ControlApi) -> None:
    call(api, "POST", "/api/errors/trigger", {"error": "no_ground"})
    status, payload = call(api, "POST", "/api/evse/enable")
    assert status == 400
    assert "fault" in str(payload["error"])


def test_handler_bug_is_a_json_500_not_a_crash(api: ControlApi, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> dict[str, object]:
        raise RuntimeError("bug")

    monkeypatch.setattr(api.controller, "ev_json", boom)
    status, payload = call(api, "GET", "/api/ev/status")
    assert status == 500
    assert "bug" in str(payload["error"])


def test_status_shapes(api: ControlApi) -> None:
    call(api, "POST", "/api/ev/connect")
    _, status = call(api, "GET", "/api/status")
    assert set(status) == {"evse", "ev"}
    evse = status["evse"]
    assert isinstance(evse, dict)
    for key in (
        "state",
        "state_name",
        "current_capacity",
        "actual_current",
        "voltage",
        "session_time",
        "service_level",
        "error_flags",
        "firmware_version",
        "protocol_version",
    ):
        assert key in evse
    assert evse["state"] == 2
    _, errors = call(api, "GET", "/api/errors/status")
    assert errors["error_counts"] == {"gfci": 0, "no_ground": 0, "stuck_relay": 0}
    assert call(api, "GET", "/api/evse/version")[1] == {"firmware": "8.2.2", "protocol": "5.2.1"}
