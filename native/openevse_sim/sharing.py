"""Roles, the controller's allocation loop and the member failsafe (firmware.md §3.4, §4.3).

Implements the `loadsharing.LoadSharing` seam. Roles come from config: controller =
`loadsharing_enabled` and role `controller`, member = enabled and role `member`.

- Controller, every `OPENEVSE_SIM_ALLOCATION_PERIOD` s (default 5, the firmware's value):
  inputs from itself and every polled peer, `allocation.allocate`, rows published in
  `/loadsharing/status`, its own row applied as the Shaper claim, each connected member sent
  `{"loadsharing":{"target_current":A,"reason":…}}` on the poller's WebSocket to it. Member
  config is pushed when a member's socket opens and after an accepted `loadsharing_*` change.
- Member, every 0.5 s (the poller loop): failsafe when the controller host is empty, no
  allocation has arrived, or the last is older than the heartbeat timeout (0 → 10 s); the
  failsafe limit is the Shaper claim at `failsafe_safe_current`, or 0 A + disabled.
- `loadsharing_enabled=false` releases the load-sharing limit; leaving the member role while
  enabled releases only a failsafe limit (an allocation limit stays, §3.4 last bullet).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from openevse_sim.allocation import (
    FAILSAFE_DISABLE,
    FAILSAFE_DISABLED,
    GroupSettings,
    PeerInput,
    Rotation,
    allocate,
    contenders,
    demanding,
    failsafe_active,
)
from openevse_sim.claims import CLIENT_SHAPER, PRIORITY_SAFETY, ClaimProperties, shaper_claim
from openevse_sim.tasks import spawn

if TYPE_CHECKING:
    from openevse_sim.claims_driver import ClaimsDriver, RouteHandler
    from openevse_sim.config import Config
    from openevse_sim.outbound import Outbound
    from openevse_sim.peers import Peer, PeerGroup
    from openevse_sim.poller import Poller

PERIOD_ENV = "OPENEVSE_SIM_ALLOCATION_PERIOD"
DEFAULT_PERIOD = 5.0
MEMBER_LOOP = 0.5
MEMBER_TIMEOUT_WHEN_ZERO = 10.0
PUSH_KEYS = (
    "loadsharing_group_id",
    "loadsharing_group_max_current",
    "loadsharing_safety_factor",
    "loadsharing_heartbeat_timeout",
    "loadsharing_failsafe_mode",
    "loadsharing_failsafe_safe_current",
    "loadsharing_failsafe_peer_assumed_current",
)
FAILSAFE = "failsafe"
ALLOCATION = "allocation"


def allocation_period(env: dict[str, str]) -> float:
    """The controller period; a stand-in-only override for tests (README)."""
    raw = env.get(PERIOD_ENV)
    try:
        value = float(raw) if raw is not None else DEFAULT_PERIOD
    except ValueError:
        return DEFAULT_PERIOD
    return value if math.isfinite(value) and value > 0 else DEFAULT_PERIOD


def _number(value: Any, fallback: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return fallback
    return float(value)


def _int(value: Any) -> int:
    number = _number(value, 0.0)
    return int(number) if abs(number) < 1e9 else 0


class LoadSharingService:
    """The `LoadSharing` seam, live."""

    def __init__(
        self,
        config: Config,
        peers: PeerGroup,
        poller: Poller,
        claims: ClaimsDriver,
        outbound: Outbound,
        period: float = DEFAULT_PERIOD,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.peers = peers
        self.poller = poller
        self.claims = claims
        self.outbound = outbound
        self.period = period
        self.clock = clock
        self.rotation = Rotation()
        self._rows: list[dict[str, Any]] = []
        self._controller_failsafe = False
        self._last_frame: float | None = None
        self._limit: str | None = None  # FAILSAFE or ALLOCATION while we hold the Shaper claim
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # --- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self.poller.on_open = self._peer_socket_opened
        self._tasks = [spawn(self._controller_loop(), "allocation"), spawn(self._member_loop(), "member")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # --- the seam -------------------------------------------------------------------------
    def failsafe_active(self) -> bool:
        if self.config.is_member:
            return self._member_failsafe()
        if self.config.is_controller:
            return self._controller_failsafe
        return False

    def allocations(self) -> list[dict[str, Any]]:
        return list(self._rows) if self.config.is_controller else []

    def on_allocation_frame(self, frame: dict[str, Any]) -> None:
        """A controller's frame on our `/ws`: applied only while we are a member (§3.4)."""
        if not self.config.is_member:
            return
        target = frame.get("target_current")
        if isinstance(target, bool) or not isinstance(target, int | float) or not math.isfinite(target):
            return
        self._last_frame = self.clock()
        reason = frame.get("reason")
        print(f"DBUG: Allocation received: {target} A ({reason})", flush=True)
        self._hold(shaper_claim(max(0.0, float(target)), self._evse_min()), ALLOCATION)

    def on_config_changed(self, keys: set[str]) -> None:
        if not self.config.is_member:
            self._last_frame = None  # a later membership starts in failsafe again
        self._member_tick()
        if any(k.startswith("loadsharing_") for k in keys):
            self._wake.set()
            if self.config.is_controller:  # re-push to every connected member (§3.4, §4.3)
                for host in list(self.poller.sockets):
                    self._push_member_config(host)

    def routes(self) -> dict[str, RouteHandler]:
        return self.claims.routes()

    # --- member ---------------------------------------------------------------------------
    def _timeout(self) -> float:
        value = self.config.heartbeat_timeout
        return MEMBER_TIMEOUT_WHEN_ZERO if value <= 0 else value

    def _member_failsafe(self) -> bool:
        if not self.config.str_("loadsharing_controller_host") or self._last_frame is None:
            return True
        return self.clock() - self._last_frame > self._timeout()

    def _failsafe_claim(self) -> None:
        mode = self.config.str_("loadsharing_failsafe_mode")
        safe = self.config.float_("loadsharing_failsafe_safe_current")
        if mode == FAILSAFE_DISABLE or safe <= 0:
            self._hold(shaper_claim(0.0, self._evse_min(), force_disabled=True), FAILSAFE)
        else:
            self._hold(shaper_claim(safe, self._evse_min()), FAILSAFE)

    def _member_tick(self) -> None:
        if not self.config.bool_("loadsharing_enabled"):
            self._drop()  # re-asserted every loop, as the firmware does
        elif self.config.is_member:
            if self._member_failsafe():
                self._failsafe_claim()
        elif self._limit == FAILSAFE:
            self._drop()

    async def _member_loop(self) -> None:
        while True:
            self._member_tick()
            await asyncio.sleep(MEMBER_LOOP)

    # --- controller -----------------------------------------------------------------------
    def _evse_min(self) -> float:
        evse = self.claims.evse
        return float(evse.min_current_hard) if evse is not None else 6.0

    def _self_input(self) -> PeerInput:
        evse = self.claims.evse
        vehicle = evse.vehicle if evse is not None else 0
        state = evse.state if evse is not None else 0
        return PeerInput(
            id=f"{self.config.hostname}.local",
            online=True,
            demanding=demanding(vehicle, state, True),
            min_current=self._evse_min(),
            max_current=float(evse.max_current_soft) if evse is not None else 32.0,
            priority=self.config.int_("loadsharing_priority"),
            charging=state == 3,
        )

    def _peer_input(self, peer: Peer, local: PeerInput) -> PeerInput:
        online = self.poller.is_open(peer.host)
        cache = peer.cache
        state = _int(cache.get("state"))
        return PeerInput(
            id=peer.host,
            online=online,
            demanding=demanding(_int(cache.get("vehicle")), state, online),
            min_current=_number(cache.get("loadsharing_min_current"), local.min_current),
            max_current=_number(cache.get("loadsharing_max_current"), local.max_current),
            priority=_int(cache.get("loadsharing_priority")),
            charging=state == 3,
        )

    async def _controller_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.period)
            self._wake.clear()
            await self.run_once()

    async def run_once(self) -> None:
        """One allocation run (§3.4 controller bullets)."""
        if not self.config.is_controller:
            self._rows = []
            self._controller_failsafe = False
            return
        settings = GroupSettings.from_config(self.config.values)
        local = self._self_input()
        joined = list(self.peers.joined())
        inputs = [local] + [self._peer_input(p, local) for p in joined]
        offset = self.rotation.offset_at(self.clock(), settings.rotation_interval, contenders(inputs))
        rows = allocate(inputs, settings, rotation_offset=offset)
        self._rows = [row.to_json() for row in rows]
        self._controller_failsafe = failsafe_active(inputs, settings)
        if not rows:
            return  # group max 0: nothing computed, no limit applied
        own = rows[0]
        forced = own.reason == FAILSAFE_DISABLED
        self._hold(shaper_claim(own.target_current, self._evse_min(), force_disabled=forced), ALLOCATION)
        for peer, row in zip(joined, rows[1:], strict=True):
            if self.poller.is_open(peer.host):
                await self.poller.send(peer.host, json.dumps(row.ws_frame(), separators=(",", ":")))

    def _member_config(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "loadsharing_enabled": True,
            "loadsharing_role": "member",
            "loadsharing_controller_host": f"{self.config.hostname}.local",
        }
        for key in PUSH_KEYS:
            body[key] = self.config.get(key)
        return body

    def _push_member_config(self, host: str) -> None:
        peer = self.peers.find(host)
        if peer is None or not peer.joined:
            return
        self.outbound.post_json(f"{peer.base_url()}/config", self._member_config(), "Member config push")

    def _peer_socket_opened(self, host: str) -> None:
        if self.config.is_controller:
            self._push_member_config(host)

    # --- the Shaper claim -----------------------------------------------------------------
    def _hold(self, props: ClaimProperties, source: str) -> None:
        self._limit = source
        self.claims.set(CLIENT_SHAPER, PRIORITY_SAFETY, props)

    def _drop(self) -> None:
        if self._limit is not None:
            self._limit = None
            self.claims.release(CLIENT_SHAPER)
