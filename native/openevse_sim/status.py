"""The `/status` document (firmware.md §7.1) and the change feed `/ws` clients receive."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from openevse_sim.config import Config
    from openevse_sim.evse import Evse
    from openevse_sim.peers import PeerGroup
    from openevse_sim.rapi import RapiClient

Subscriber = Callable[[dict[str, Any]], None]


class StatusHub:
    """Builds the status document and fans partial change events out to `/ws` subscribers."""

    def __init__(
        self,
        config: Config,
        rapi: RapiClient,
        peers: PeerGroup,
        local_ip: Callable[[], str],
        long_id: str,
    ) -> None:
        self.long_id = long_id
        self.config = config
        self.rapi = rapi
        self.peers = peers
        self.local_ip = local_ip
        self.evse: Evse | None = None
        self.started = time.monotonic()
        self.subscribers: set[Subscriber] = set()
        self.live: dict[str, Any] = {"solar": 0, "grid_ie": 0, "shaper_live_pwr": 0}
        # The claims' /status keys (claims_version, override_version, manual_override, shaper,
        # shaper_cur), set by the claims driver (§7.1).
        self.claims_fields: Callable[[], dict[str, Any]] | None = None
        self.status_version = 0  # loadsharing_status_version

    def publish(self, changes: dict[str, Any]) -> None:
        """Partial event to every subscriber; `__full__` asks for the whole document."""
        event = self.document() if changes.pop("__full__", False) else dict(changes)
        if not event:
            return
        for subscriber in list(self.subscribers):
            subscriber(event)

    def document(self) -> dict[str, Any]:
        cfg = self.config
        evse = self.evse
        connected = bool(evse and evse.connected)
        temps = evse.temps if evse else [-2560, -2560, -2560]
        present = [t for t in temps if t != -2560]
        temp = max(present) if present else 0
        state = evse.state if evse else 0
        amp = evse.amp if evse else 0
        voltage = evse.voltage if evse else 240.0
        joined = self._joined_peers()
        doc: dict[str, Any] = {
            "mode": "STA" if cfg.sta_mode else "AP",
            "wifi_client_connected": 1 if cfg.sta_mode else 0,
            "eth_connected": 0,
            "net_connected": 1 if cfg.sta_mode else 0,
            "ipaddress": self.local_ip(),
            "macaddress": "",
            "emoncms_connected": 0,
            "packets_sent": 0,
            "packets_success": 0,
            "mqtt_connected": 0,
            "ohm_hour": "NotConnected",
            "free_heap": 200000,
            "comm_sent": self.rapi.comm_sent,
            "comm_success": self.rapi.comm_success,
            # Two flags upstream (web_server.cpp): RapiSender's link flag, and OpenEVSE's
            # "answered $GV" flag, which never falls again (rapi.py, evse.py).
            "rapi_connected": 1 if self.rapi.connected else 0,
            "evse_connected": 1 if connected else 0,
            "amp": amp,
            "voltage": voltage,
            "power": round(amp / 1000 * voltage, 2),
            "pilot": evse.pilot if evse else 0,
            "max_current": evse.max_current_soft if evse else 0,
            "temp": temp,
            "temp_max": temp,
            "temp1": temps[0],
            "temp2": temps[1],
            "temp3": temps[2],
            "temp4": -2560,
            "state": state,
            "status": evse.status_text if evse else "starting",
            "flags": evse.vflags if evse else 0,
            "vehicle": evse.vehicle if evse else 0,
            "colour": 0,
            "manual_override": 0,
            "elapsed": evse.elapsed if evse else 0,
            "wattsec": 0,
            "watthour": 0,
            "gfcicount": evse.gfci_count if evse else 0,
            "nogndcount": evse.nognd_count if evse else 0,
            "stuckcount": evse.stuck_count if evse else 0,
            "solar": self.live["solar"],
            "grid_ie": self.live["grid_ie"],
            "charge_rate": 0,
            "divert_update": 0,
            "divert_active": False,
            "divertmode": 1,
            "available_current": 0,
            "smoothed_available_current": 0,
            "shaper": 1 if cfg.bool_("current_shaper_enabled") else 0,
            "shaper_live_pwr": self.live["shaper_live_pwr"],
            "shaper_cur": evse.max_current_soft if evse else 0,
            "shaper_updated": False,
            "service_level": 2,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "local_time": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime()),
            "offset": "+0000",
            "uptime": int(time.monotonic() - self.started),
            "config_version": cfg.version,
            "claims_version": 0,
            "override_version": 0,
            "schedule_version": 0,
            "schedule_plan_version": 0,
            "limit_version": 0,
            "vehicle_state_update": 0,
            "tesla_vehicle_count": 0,
            "tesla_vehicle_id": 0,
            "tesla_vehicle_name": 0,
            "tesla_error": False,
            "loadsharing_min_current": evse.min_current_hard if evse else 6,
            "loadsharing_max_current": evse.max_current_soft if evse else 32,
            "loadsharing_priority": cfg.int_("loadsharing_priority"),
            "loadsharing_peers_version": self.peers.version,
            "loadsharing_status_version": self.status_version,
            "loadsharing_joined_peers": joined,
            "loadsharing_group_current_total": sum(_milliamps(p.get("amp")) for p in joined),
        }
        if self.claims_fields is not None:
            doc.update(self.claims_fields())
        for key in ("battery_level", "battery_range", "time_to_full_charge"):
            if key in self.live:
                doc[key] = self.live[key]
        return doc

    def _joined_peers(self) -> list[dict[str, Any]]:
        cfg = self.config
        evse = self.evse
        local: dict[str, Any] = {
            "hostname": f"{cfg.hostname}.local",
            "id": self.long_id,
            "name": cfg.hostname,
            "amp": evse.amp if evse else 0,
            "voltage": evse.voltage if evse else 240.0,
            "pilot": evse.pilot if evse else 0,
            "vehicle": evse.vehicle if evse else 0,
            "state": evse.state if evse else 0,
            "min_current": evse.min_current_hard if evse else 6,
            "max_current": evse.max_current_soft if evse else 32,
            "priority": cfg.int_("loadsharing_priority"),
        }
        rows = [local]
        for peer in self.peers.joined():
            row: dict[str, Any] = {"hostname": peer.host, "id": peer.id, "name": peer.name}
            row.update(peer.status_object() or {})
            rows.append(row)
        return rows


def _milliamps(value: Any) -> int:
    """A peer's `amp` as published; anything that is not a finite number counts as 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return int(value) if math.isfinite(value) else 0
