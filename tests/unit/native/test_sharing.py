"""Unit tests of the role logic in `openevse_sim.sharing` (firmware.md §3.4) with a fake poller and clock."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from openevse_sim import sharing
from openevse_sim.claims import CLIENT_SHAPER
from openevse_sim.claims_driver import ClaimsDriver
from openevse_sim.config import Config
from openevse_sim.outbound import Outbound
from openevse_sim.peers import PeerGroup
from openevse_sim.sharing import LoadSharingService, allocation_period


class FakePoller:
    def __init__(self) -> None:
        self.open: set[str] = set()
        self.sockets: dict[str, object] = {}
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.on_open: Any = None

    def is_open(self, host: str) -> bool:
        return host in self.open

    async def send(self, host: str, text: str) -> bool:
        self.sent.append((host, json.loads(text)))
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def service(tmp_path: Path, clock: Clock, **values: Any) -> tuple[LoadSharingService, FakePoller, Config]:
    config = Config(tmp_path / "eeprom", "openevse-7856")
    config.values.update(values)
    peers = PeerGroup(tmp_path, lambda: config.heartbeat_timeout)
    poller = FakePoller()
    claims = ClaimsDriver(config, lambda changes: None)
    svc = LoadSharingService(config, peers, poller, claims, Outbound(), clock=clock.monotonic)  # type: ignore[arg-type]
    return svc, poller, config


def shaper(svc: LoadSharingService) -> dict[str, Any] | None:
    return svc.claims.table.get(CLIENT_SHAPER)


MEMBER = {"loadsharing_enabled": True, "loadsharing_role": "member", "loadsharing_controller_host": "c.local"}


@pytest.mark.parametrize(
    ("raw", "period"),
    [(None, 5.0), ("1", 1.0), ("0.25", 0.25), ("0", 5.0), ("-1", 5.0), ("nan", 5.0), ("x", 5.0)],
)
def test_allocation_period_env(raw: str | None, period: float) -> None:
    env = {} if raw is None else {sharing.PERIOD_ENV: raw}
    assert allocation_period(env) == period


def test_member_failsafe_timeout_zero_means_ten_seconds(tmp_path: Path, clock: Clock) -> None:
    svc, _, _ = service(tmp_path, clock, **MEMBER, loadsharing_heartbeat_timeout=0)
    assert svc.failsafe_active()  # no allocation yet
    svc.on_allocation_frame({"target_current": 12.9, "reason": "equal_share"})
    assert not svc.failsafe_active()
    assert shaper(svc) == {"priority": 5000, "max_current": 12, "auto_release": False}
    clock.now += 10.0
    assert not svc.failsafe_active()
    clock.now += 0.1
    assert svc.failsafe_active()


def test_member_failsafe_with_an_empty_controller_host(tmp_path: Path, clock: Clock) -> None:
    svc, _, _ = service(tmp_path, clock, **{**MEMBER, "loadsharing_controller_host": ""})
    svc.on_allocation_frame({"target_current": 12, "reason": "equal_share"})
    assert svc.failsafe_active()


@pytest.mark.parametrize(
    ("mode", "safe", "claim"),
    [
        ("safe_current", 6.0, {"priority": 5000, "max_current": 6, "auto_release": False}),
        (
            "safe_current",
            0.0,
            {"priority": 5000, "state": "disabled", "max_current": 0, "auto_release": False},
        ),
        ("disable", 6.0, {"priority": 5000, "state": "disabled", "max_current": 0, "auto_release": False}),
    ],
)
def test_failsafe_limit_by_mode(
    tmp_path: Path, clock: Clock, mode: str, safe: float, claim: dict[str, Any]
) -> None:
    svc, _, _ = service(
        tmp_path, clock, **MEMBER, loadsharing_failsafe_mode=mode, loadsharing_failsafe_safe_current=safe
    )
    svc._member_tick()
    assert shaper(svc) == claim


def test_leaving_member_keeps_an_allocation_limit_until_disabled(tmp_path: Path, clock: Clock) -> None:
    svc, _, config = service(tmp_path, clock, **MEMBER)
    svc.on_allocation_frame({"target_current": 20, "reason": "equal_share"})
    config.values["loadsharing_role"] = ""
    svc.on_config_changed({"loadsharing_role"})
    assert shaper(svc) == {"priority": 5000, "max_current": 20, "auto_release": False}
    config.values["loadsharing_enabled"] = False
    svc.on_config_changed({"loadsharing_enabled"})
    assert shaper(svc) is None


def test_leaving_member_clears_a_failsafe_limit(tmp_path: Path, clock: Clock) -> None:
    svc, _, config = service(tmp_path, clock, **MEMBER)
    svc._member_tick()
    assert shaper(svc) is not None
    config.values["loadsharing_role"] = ""
    svc.on_config_changed({"loadsharing_role"})
    assert shaper(svc) is None
    assert not svc.failsafe_active()


@pytest.mark.parametrize(
    "frame", [{"target_current": "10"}, {"target_current": True}, {"reason": "idle"}, {}]
)
def test_bad_frames_are_ignored(tmp_path: Path, clock: Clock, frame: dict[str, Any]) -> None:
    svc, _, _ = service(tmp_path, clock, **MEMBER)
    svc.on_allocation_frame(frame)
    assert shaper(svc) is None
    assert svc.failsafe_active()


def test_frames_ignored_unless_member(tmp_path: Path, clock: Clock) -> None:
    svc, _, _ = service(tmp_path, clock, loadsharing_enabled=True, loadsharing_role="controller")
    svc.on_allocation_frame({"target_current": 10, "reason": "equal_share"})
    assert shaper(svc) is None


def test_controller_run_sends_frames_to_open_members_only(tmp_path: Path, clock: Clock) -> None:
    svc, poller, _ = service(
        tmp_path,
        clock,
        loadsharing_enabled=True,
        loadsharing_role="controller",
        loadsharing_group_max_current=32,
    )
    for host in ("a.local:8000", "b.local:8000", "c.local:8000"):
        peer = svc.peers.join(host)
        peer.merge_status(
            {"vehicle": 1, "state": 3, "loadsharing_min_current": 6, "loadsharing_max_current": 32}
        )
    poller.open = {"a.local:8000", "b.local:8000"}  # c's socket is closed: offline, 6 A reserved
    asyncio.run(svc.run_once())
    rows = {row["id"]: (row["target_current"], row["reason"]) for row in svc.allocations()}
    # The local unit has no EVSE here (state 0): not demanding, idle.
    assert rows == {
        "openevse-7856.local": (0.0, "idle"),
        "a.local:8000": (13.0, "equal_share"),
        "b.local:8000": (13.0, "equal_share"),
        "c.local:8000": (0.0, "offline"),
    }
    assert svc.failsafe_active()
    assert poller.sent == [
        ("a.local:8000", {"loadsharing": {"target_current": 13.0, "reason": "equal_share"}}),
        ("b.local:8000", {"loadsharing": {"target_current": 13.0, "reason": "equal_share"}}),
    ]
    assert shaper(svc) == {"priority": 5000, "state": "disabled", "max_current": 0, "auto_release": False}


def test_nothing_computed_without_a_group_max(tmp_path: Path, clock: Clock) -> None:
    svc, poller, _ = service(tmp_path, clock, loadsharing_enabled=True, loadsharing_role="controller")
    svc.peers.join("a.local:8000").merge_status({"vehicle": 1, "state": 3})
    poller.open = {"a.local:8000"}
    asyncio.run(svc.run_once())
    assert svc.allocations() == []
    assert poller.sent == []
    assert shaper(svc) is None
    assert not svc.failsafe_active()
