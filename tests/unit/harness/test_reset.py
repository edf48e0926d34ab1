"""harness.reset against an in-memory fake of the firmware's and emulator's HTTP contract
(firmware.md §1.4, §4.3, §7.3, §7.4; evse.md §6), and the pool's Stats."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

import pytest
import requests

from harness import reset as R
from harness.rigpool import Stats


@pytest.fixture(autouse=True)
def no_settling(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fakes are settled at once; the settling loop has its own test."""
    monkeypatch.setattr(R, "SETTLE", 0.0)


def response(status: int, body: Any) -> requests.Response:
    resp = requests.Response()
    resp.status_code = status
    resp._content = json.dumps(body).encode()
    return resp


class FakeFirmware:
    """Just enough of the firmware: config with the member lockout, peers, override, claims."""

    def __init__(self, *, claims: bool = True) -> None:
        self.config: dict[str, Any] = {
            "hostname": "evse-x-0",
            "loadsharing_enabled": False,
            "loadsharing_role": "",
            "loadsharing_controller_host": "",
            "loadsharing_group_id": "",
            "loadsharing_heartbeat_timeout": 30,
            "wifi_serial": "abc",
        }
        self.peers: list[dict[str, Any]] = [{"host": "evse-x-0.local", "id": "abc", "name": "evse-x-0",
                                              "joined": True, "isLocal": True}]  # fmt: skip
        self.override: dict[str, Any] = {}
        self.claims: dict[int, dict[str, Any]] | None = {} if claims else None
        self.status = {"state": 1, "vehicle": 0, "amp": 0, "pilot": 32}
        self.log: list[str] = []
        self.ignore_config = False

    def member(self) -> bool:
        return bool(self.config["loadsharing_enabled"]) and self.config["loadsharing_role"] == "member"

    def request(self, method: str, path: str, **kw: Any) -> requests.Response:
        self.log.append(f"{method} {path}")
        body = kw.get("json")
        if (method, path) == ("GET", "/config"):
            return response(200, dict(self.config))
        if (method, path) == ("POST", "/config"):
            assert isinstance(body, dict)
            ls = any(k.startswith("loadsharing_") for k in body)
            if self.member() and ls and body.get("loadsharing_role") not in ("member", ""):
                return response(403, {"msg": "Load sharing configuration is read-only on members"})
            if not self.ignore_config:
                self.config.update(body)
            return response(200, {"msg": "done"})
        if (method, path) == ("GET", "/loadsharing/peers"):
            return response(200, [dict(p) for p in self.peers])
        if method == "DELETE" and path.startswith("/loadsharing/peers/"):
            if self.member():
                return response(403, {"msg": "read-only"})
            host = unquote(path.removeprefix("/loadsharing/peers/"))
            for row in self.peers:
                if row["host"] == host and row["joined"] and not row["isLocal"]:
                    row["joined"] = False
                    return response(200, {"msg": "done"})
            return response(404, {"msg": "Peer not found"})
        if path.startswith(("/override", "/claims")) and self.claims is None:
            return response(301, "<html>")
        if (method, path) == ("GET", "/override"):
            return response(200, self.override)
        if (method, path) == ("DELETE", "/override"):
            self.override = {}
            assert self.claims is not None
            self.claims.pop(R.MANUAL_CLIENT, None)
            return response(200, {"msg": "Deleted"})
        if (method, path) == ("GET", "/claims"):
            assert self.claims is not None
            return response(200, list(self.claims.values()))
        if method == "DELETE" and path.startswith("/claims/"):
            assert self.claims is not None
            self.claims.pop(int(path.rsplit("/", 1)[1]))
            return response(200, {"msg": "done"})
        if (method, path) == ("GET", "/status"):
            return response(200, dict(self.status))
        return response(404, {"msg": "?"})


class FakeEmulator:
    def __init__(self) -> None:
        self.evse: dict[str, Any] = {"state": 1, "current_capacity": 32, "service_level": "Auto",
                                     "error_flags": 0, "gfci_count": 0}  # fmt: skip
        self.ev: dict[str, Any] = {"connected": False, "requesting_charge": False, "soc": 50.0,
                                   "max_rate_amps": 32.0}  # fmt: skip
        self.log: list[str] = []

    def request(self, method: str, path: str, **kw: Any) -> requests.Response:
        self.log.append(f"{method} {path}")
        body = kw.get("json") or {}
        if path == "/api/status":
            return response(200, {"evse": dict(self.evse), "ev": dict(self.ev)})
        actions = {
            "/api/ev/disconnect": lambda: self.ev.update(connected=False, requesting_charge=False),
            "/api/errors/clear": lambda: self.evse.update(error_flags=0),
            "/api/evse/enable": lambda: self.evse.update(state=1),
            "/api/evse/current": lambda: self.evse.update(current_capacity=body["amps"]),
            "/api/ev/max_rate": lambda: self.ev.update(max_rate_amps=body["amps"]),
            "/api/ev/soc": lambda: self.ev.update(soc=body["soc"]),
            "/api/evse/service_level": lambda: self.evse.update(service_level=body["level"]),
        }
        actions[path]()
        return response(200, {"success": True})


class Unit:
    def __init__(self, *, claims: bool = True) -> None:
        self.name = "evse-x-0"
        self.api = FakeFirmware(claims=claims)
        self.emulator_api = FakeEmulator()


def dirty(unit: Unit) -> None:
    """What a test may leave behind: peers, config, member role, override, claims, a car."""
    fw = unit.api
    fw.peers.append({"host": "localhost:20001", "id": "", "name": "", "joined": True, "isLocal": False})
    fw.peers.append(
        {"host": "evse-y-1.local:20001", "id": "y", "name": "y", "joined": False, "isLocal": False}
    )
    fw.config.update(loadsharing_heartbeat_timeout=7, loadsharing_group_id="dirty", loadsharing_enabled=True,
                     loadsharing_role="member", loadsharing_controller_host="x.local")  # fmt: skip
    if fw.claims is not None:
        fw.override = {"state": "disabled"}
        fw.claims[R.MANUAL_CLIENT] = {"client": R.MANUAL_CLIENT, "priority": 1000}
        fw.claims[4242] = {"client": 4242, "priority": 500, "max_current": 10}
    unit.emulator_api.ev.update(connected=True, requesting_charge=True, soc=70.0, max_rate_amps=12.0)
    unit.emulator_api.evse.update(current_capacity=16, state=254)


def test_config_body_adds_the_role_for_load_sharing_keys_only() -> None:
    base = {"loadsharing_role": "", "loadsharing_group_id": "", "hostname": "a", "wifi_serial": "s"}
    assert R.config_body({**base, "loadsharing_group_id": "dirty"}, base) == {
        "loadsharing_group_id": "",
        "loadsharing_role": "",
    }
    assert R.config_body({**base, "hostname": "b"}, base) == {"hostname": "a"}
    assert R.config_body({**base, "wifi_serial": "other"}, base) == {}  # read-only: never posted
    assert R.config_body(base, base) == {}


def test_peer_path_percent_encodes_the_host() -> None:
    assert R.peer_path("localhost:8001") == "/loadsharing/peers/localhost%3A8001"
    assert R.peer_path("a/b c") == "/loadsharing/peers/a%2Fb%20c"


def test_reset_of_a_member_restores_everything_and_verifies() -> None:
    unit = Unit()
    baseline = R.capture(unit)
    dirty(unit)
    assert len(R.verify(unit, baseline)) >= 8
    outcome = R.reset_and_verify(unit, baseline, timeout=2.0)
    assert outcome.ok, outcome.problems
    assert outcome.unsupported == set()
    fw = unit.api
    # Config first (role in the body beats the lockout), then the delete a member refuses.
    posts = [e for e in fw.log if e.startswith(("POST /config", "DELETE /loadsharing"))]
    assert posts == ["POST /config", "DELETE /loadsharing/peers/localhost%3A20001"]
    assert fw.config["loadsharing_group_id"] == ""
    assert fw.config["loadsharing_role"] == ""
    assert "DELETE /claims/4242" in fw.log
    assert "DELETE /override" in fw.log
    # The discovered row (not joined) is no leftover and is left alone.
    assert [p["host"] for p in fw.peers if not p["joined"]] == ["localhost:20001", "evse-y-1.local:20001"]
    emu = unit.emulator_api
    assert emu.ev == {"connected": False, "requesting_charge": False, "soc": 50.0, "max_rate_amps": 32.0}
    assert (emu.evse["state"], emu.evse["current_capacity"]) == (1, 32)


def test_missing_override_and_claims_are_skipped_and_recorded() -> None:
    unit = Unit(claims=False)
    baseline = R.capture(unit)
    assert (baseline.override, baseline.claims) == (None, None)
    dirty(unit)
    outcome = R.reset_and_verify(unit, baseline, timeout=2.0)
    assert outcome.ok, outcome.problems
    assert outcome.unsupported == {"/override", "/claims"}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_difference_that_stays_fails_at_the_deadline_naming_it() -> None:
    unit = Unit()
    baseline = R.capture(unit)
    unit.api.config["loadsharing_group_id"] = "dirty"
    unit.api.ignore_config = True  # accepts the POST, changes nothing
    clock = Clock()
    outcome = R.reset_and_verify(unit, baseline, timeout=3.0, clock=clock, sleep=clock.sleep)
    assert not outcome.ok
    assert outcome.problems == ["config loadsharing_group_id: 'dirty' (baseline '')"]
    assert 3.0 <= clock.now < 3.5
    assert outcome.rounds >= 3  # re-applied while waiting


def test_a_counter_that_cannot_go_back_fails_at_once() -> None:
    unit = Unit()
    baseline = R.capture(unit)
    unit.emulator_api.evse["gfci_count"] = 1
    clock = Clock()
    outcome = R.reset_and_verify(unit, baseline, timeout=30.0, clock=clock, sleep=clock.sleep)
    assert not outcome.ok
    assert outcome.problems == ["emulator evse.gfci_count: 1 (baseline 0)"]
    assert clock.now == 0.0


def test_a_refused_step_fails_naming_pair_and_step() -> None:
    unit = Unit()
    baseline = R.capture(unit)
    unit.api.config["loadsharing_role"] = "member"  # not enabled: no lockout, so POST works
    unit.api.config["loadsharing_enabled"] = True  # ... now it is a member: deletes refused
    unit.api.peers.append({"host": "a.b", "id": "", "name": "", "joined": True, "isLocal": False})
    original = unit.api.request

    def refuse_config(method: str, path: str, **kw: Any) -> requests.Response:
        if (method, path) == ("POST", "/config"):
            return response(500, {"msg": "boom"})
        return original(method, path, **kw)

    unit.api.request = refuse_config  # type: ignore[method-assign]
    outcome = R.reset_and_verify(unit, baseline, timeout=5.0)
    assert not outcome.ok
    assert len(outcome.problems) == 1
    assert outcome.problems[0].startswith("[evse-x-0] reset of config: POST /config")
    assert "HTTP 500" in outcome.problems[0]


def test_capture_without_link_then_complete() -> None:
    unit = Unit()
    baseline = R.capture(unit, link=False)
    assert (baseline.emulator, baseline.status) == (None, None)
    unit.api.config["max_current_soft"] = 32  # appears once the EVSE answered (§7.2)
    R.complete(unit, baseline)
    assert baseline.linked
    assert baseline.config["max_current_soft"] == 32
    assert R.verify(unit, baseline) == []


def test_unreadable_state_is_a_reset_error() -> None:
    unit = Unit()
    baseline = R.capture(unit)

    def down(method: str, path: str, **kw: Any) -> requests.Response:
        raise requests.ConnectionError("refused")

    unit.api.request = down  # type: ignore[method-assign]
    with pytest.raises(R.ResetError, match="GET /config: ConnectionError"):
        R.verify(unit, baseline)


def test_stats_merge_and_summary_lines() -> None:
    a, b = Stats(started=1, start_s=1.5, reused=3, reset=3, reset_s=0.5), Stats(started=2, replaced=1)
    b.event("rig n2 (gw1): before t: p replaced by q: emulator died")
    b.unsupported = ["/claims"]
    total = Stats()
    total.merge(a.to_json())
    total.merge(b.to_json())
    lines = total.lines("session")
    assert lines[0].startswith(
        "harness rigs (--rig-scope session): 3 started (1.5s), 3 reused, 3 reset (0.5s), "
    )
    assert "1 pairs replaced" in lines[0]
    assert lines[1] == "harness reset: not supported by this firmware, skipped: /claims"
    assert lines[2] == "harness: rig n2 (gw1): before t: p replaced by q: emulator died"


def test_baseline_waits_until_the_firmware_settled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Right after the link the firmware may still be settling: two equal snapshots needed."""
    monkeypatch.setattr(R, "SETTLE", 0.5)
    unit = Unit()
    clock = Clock()
    maxima = iter([32, 80, 80])
    original = unit.api.request

    def settling(method: str, path: str, **kw: Any) -> requests.Response:
        if (method, path) == ("GET", "/status"):
            unit.api.status["max_current"] = next(maxima)
        return original(method, path, **kw)

    unit.api.request = settling  # type: ignore[method-assign]
    baseline = R.capture(unit, clock=clock, sleep=clock.sleep)
    assert baseline.status is not None
    assert baseline.status["max_current"] == 80
    assert clock.now == 1.0
