"""The J1772 controller and the car behind it (evse.md §2, §4).

One lock guards everything, so the RAPI thread, the control API's threads and the tick
thread all see one consistent controller. State is derived, not stored: after every change
``_refresh`` recomputes (state, pilot, vflags) and queues an ``$AT`` when they moved, so
sleep, disable, enable, faults and the car all emit ``$AT`` the same way (evse.md §1).
The car's draw is derived too: it follows ``$SC`` and ``$FS`` at once, not on a tick.
"""

from __future__ import annotations

import random
import string
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

# Controller state codes (evse.md §2).
STATE_STARTING = 0x00
STATE_A = 0x01
STATE_B = 0x02
STATE_C = 0x03
STATE_D = 0x04
STATE_DIODE_FAULT = 0x05
STATE_GFCI_FAULT = 0x06
STATE_NO_GROUND = 0x07
STATE_STUCK_RELAY = 0x08
STATE_GFI_SELF_TEST = 0x09
STATE_OVER_TEMP = 0x0A
STATE_OVER_CURRENT = 0x0B
STATE_RELAY_CLOSURE = 0x0E
STATE_SLEEPING = 0xFE
STATE_DISABLED = 0xFF

STATE_NAMES = {
    STATE_STARTING: "starting",
    STATE_A: "not_connected",
    STATE_B: "connected",
    STATE_C: "charging",
    STATE_D: "vent_required",
    STATE_DIODE_FAULT: "diode_check_failed",
    STATE_GFCI_FAULT: "gfci_fault",
    STATE_NO_GROUND: "no_ground",
    STATE_STUCK_RELAY: "stuck_relay",
    STATE_GFI_SELF_TEST: "gfi_self_test_failed",
    STATE_OVER_TEMP: "over_temperature",
    STATE_OVER_CURRENT: "over_current",
    STATE_RELAY_CLOSURE: "relay_closure_fault",
    STATE_SLEEPING: "sleeping",
    STATE_DISABLED: "disabled",
}

# vflags (evse.md §2).
VF_HARD_FAULT = 0x0002
VF_NO_GROUND_TRIPPED = 0x0020
VF_RELAY_CLOSED = 0x0040
VF_GFI_TRIPPED = 0x0080
VF_EV_CONNECTED = 0x0100

# Settings flags reported by $GE (controller ECF_* bits; 0x0001 = L2, evse.md §3).
SF_L2 = 0x0001
SF_AUTO_SVC_LEVEL_DISABLED = 0x0020
FEATURE_FLAGS = {  # $FF <letter> 0|1 -> the "disabled" bit it clears/sets
    "D": 0x0002,  # diode check
    "V": 0x0004,  # vent required
    "G": 0x0008,  # ground check
    "R": 0x0010,  # stuck relay check
    "F": 0x0200,  # GFI self test
    "T": 0x0400,  # temperature check
    "B": 0x8000,  # front panel button
}

# Faults the control API can inject: state code, vflags, upstream error_flags bit.
FAULTS: dict[str, tuple[int, int, int]] = {
    "gfci": (STATE_GFCI_FAULT, VF_GFI_TRIPPED, 0x01),
    "stuck_relay": (STATE_STUCK_RELAY, VF_HARD_FAULT, 0x02),
    "no_ground": (STATE_NO_GROUND, VF_NO_GROUND_TRIPPED, 0x04),
    "diode_check": (STATE_DIODE_FAULT, 0, 0x08),
    "over_temp": (STATE_OVER_TEMP, 0, 0x10),
    "gfi_self_test": (STATE_GFI_SELF_TEST, VF_HARD_FAULT, 0x20),
    # Ours (not in the upstream API): the remaining controller fault states.
    "over_current": (STATE_OVER_CURRENT, 0, 0x40),
    "relay_closure": (STATE_RELAY_CLOSURE, VF_HARD_FAULT, 0x80),
}

MIN_AMPS = 6
HW_MAX_AMPS = {"L1": 16, "L2": 80}
VOLTS_MV = {"L1": 120_000, "L2": 240_000}
TEMP_AMBIENT = 250  # 25.0 °C, in 0.1 °C
TEMP_HOT = 700  # what the sensors read during an over-temperature fault
TEMP_ABSENT = -2560  # the controller's "no sensor" value (evse.md §3)
HS_ACK_COOKIE = 165  # $SY 165 acknowledges a missed heartbeat pulse

# Heartbeat trigger values, as $SY reports them (controller HS_* values).
HS_NEVER_MISSED = 0
HS_MISSED_ACKED = 1
HS_MISSED_NOACK = 2

ServiceLevel = Literal["L1", "L2", "Auto"]
Mode = Literal["active", "sleep", "disabled"]
Clock = Callable[[], float]


def new_mcu_id(rng: random.Random | None = None) -> str:
    """6 ASCII chars + 4 hex digits (evse.md §3), random per instance so ids never repeat."""
    rng = rng or random.SystemRandom()
    head = "EM" + "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(4))
    return head + f"{rng.randrange(0x10000):04X}"


@dataclass(frozen=True)
class Status:
    """What $GS / $AT report."""

    state: int
    pilot: int
    capacity: int
    vflags: int


class Controller:
    """The EVSE controller and its car; every public method is thread-safe."""

    def __init__(
        self,
        *,
        firmware_version: str = "8.2.2",
        protocol_version: str = "5.2.1",
        mcu_id: str | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.firmware_version = firmware_version
        self.protocol_version = protocol_version
        self.mcu_id = mcu_id or new_mcu_id()
        self._clock = clock
        self._lock = threading.RLock()
        self._wakeup: Callable[[], None] = lambda: None
        self._events: list[tuple[str, list[str]]] = []
        self._boot_pending = True  # $AB for the first client (evse.md §1)
        # Persistent settings (survive a reset, like the controller's EEPROM).
        self._service_level: ServiceLevel = "Auto"
        self._saved_capacity = 32
        self._max_configured = HW_MAX_AMPS["L2"]
        self._settings_flags = 0
        self._scale, self._offset = 220, 0
        self._total_wh = 0.0
        self._gfci_count = self._no_ground_count = self._stuck_relay_count = 0
        # The car.
        self.ev_connected = False
        self.ev_requesting = False
        self.ev_soc = 50.0
        self.ev_battery_kwh = 60.0
        self.ev_max_amps = 32.0
        self._boot()

    def _boot(self) -> None:
        """Volatile state as after power-on or a reset."""
        self._mode: Mode = "active"
        self._faults: list[str] = []
        self._capacity = self._saved_capacity  # what $SC asked for
        self._voltage_mv: int | None = None  # $SV override, else by service level
        self._session_ws = 0.0
        self._elapsed = 0.0
        self._hs_interval = 0
        self._hs_current = 0
        self._hs_trigger = HS_NEVER_MISSED
        self._hs_last = self._clock()
        self._last_tick = self._clock()
        self._last: Status | None = None
        self._refresh()

    # ----- events -----------------------------------------------------------------

    def set_wakeup(self, wakeup: Callable[[], None]) -> None:
        """Called whenever an async frame is queued; must not block (it may run under the lock)."""
        self._wakeup = wakeup

    def pop_events(self) -> list[tuple[str, list[str]]]:
        """Queued async frames as (code, values), oldest first; $AB, if pending, comes first."""
        with self._lock:
            events = self._events
            self._events = []
            if self._boot_pending:
                self._boot_pending = False
                events.insert(0, ("AB", ["00", self.firmware_version]))
            return events

    def discard_events(self) -> None:
        """Drop queued $AT frames (nobody was listening); a pending $AB stays."""
        with self._lock:
            self._events = []

    @property
    def boot_pending(self) -> bool:
        with self._lock:
            return self._boot_pending

    def _refresh(self) -> bool:
        """Recompute the status; queue $AT if it changed. Returns True if it did."""
        status = self._status()
        if status == self._last:
            return False
        old, self._last = self._last, status
        if old is not None and not (old.vflags & VF_EV_CONNECTED) and status.vflags & VF_EV_CONNECTED:
            self._session_ws = 0.0  # a new plug-in is a new session
            self._elapsed = 0.0
        if old is not None and (old.state, old.pilot, old.vflags) != (
            status.state,
            status.pilot,
            status.vflags,
        ):
            self._events.append(
                (
                    "AT",
                    [
                        f"{status.state:02x}",
                        f"{status.pilot:02x}",
                        str(status.capacity),
                        f"{status.vflags:04x}",
                    ],
                )
            )
            return True
        return False

    def _changed(self) -> None:
        """After a mutation: refresh and wake the sender if an $AT was queued."""
        if self._refresh():
            self._wakeup()

    # ----- derived values (lock held) ---------------------------------------------

    def _level(self) -> Literal["L1", "L2"]:
        return "L1" if self._service_level == "L1" else "L2"

    def _hw_max(self) -> int:
        return HW_MAX_AMPS[self._level()]

    def _upper(self, heartbeat: bool = True) -> int:
        upper = min(self._max_configured, self._hw_max())
        if heartbeat and self._hs_trigger == HS_MISSED_NOACK:
            upper = min(upper, max(MIN_AMPS, self._hs_current))
        return upper

    def _pilot_amps(self) -> int:
        return max(MIN_AMPS, min(self._capacity, self._upper()))

    def _state(self) -> int:
        if self._faults:
            return FAULTS[self._faults[0]][0]
        if self._mode == "sleep":
            return STATE_SLEEPING
        if self._mode == "disabled":
            return STATE_DISABLED
        if not self.ev_connected:
            return STATE_A
        if self.ev_requesting:
            return STATE_C
        return STATE_B

    def _status(self) -> Status:
        state = self._state()
        vflags = 0
        for name in self._faults:
            vflags |= FAULTS[name][1]
        if self.ev_connected:
            vflags |= VF_EV_CONNECTED
        if state == STATE_C:
            vflags |= VF_RELAY_CLOSED
        if not self.ev_connected:
            pilot = STATE_A
        elif state == STATE_C:
            pilot = STATE_C
        else:
            pilot = STATE_B
        return Status(state=state, pilot=pilot, capacity=self._pilot_amps(), vflags=vflags)

    def _voltage(self) -> int:
        return self._voltage_mv if self._voltage_mv is not None else VOLTS_MV[self._level()]

    def _actual_amps(self) -> float:
        if self._state() != STATE_C:
            return 0.0
        return max(0.0, min(float(self._pilot_amps()), self.ev_max_amps))

    # ----- reads --------------------------------------------------------------------

    def status(self) -> Status:
        with self._lock:
            return self._status()

    def elapsed_s(self) -> int:
        with self._lock:
            return int(self._elapsed)

    def capacity_info(self) -> tuple[int, int, int, int]:
        """$GC: min A, hardware max A, pilot A, configured max A."""
        with self._lock:
            return MIN_AMPS, self._hw_max(), self._pilot_amps(), self._max_configured

    def settings(self) -> tuple[int, int]:
        """$GE: pilot A, settings flags."""
        with self._lock:
            flags = self._settings_flags
            if self._level() == "L2":
                flags |= SF_L2
            if self._service_level != "Auto":
                flags |= SF_AUTO_SVC_LEVEL_DISABLED
            return self._pilot_amps(), flags

    def fault_counts(self) -> tuple[int, int, int]:
        with self._lock:
            return self._gfci_count, self._no_ground_count, self._stuck_relay_count

    def ammeter(self) -> tuple[int, int]:
        with self._lock:
            return self._scale, self._offset

    def temperatures(self) -> tuple[int, int, int]:
        """$GP: DS3231, MCP9808, TMP007 in 0.1 °C; the IR sensor is absent."""
        with self._lock:
            t = TEMP_HOT if "over_temp" in self._faults else TEMP_AMBIENT
            return t, t, TEMP_ABSENT

    def meter(self) -> tuple[int, int]:
        """$GG: milliamps, millivolts."""
        with self._lock:
            return round(self._actual_amps() * 1000), self._voltage()

    def energy(self) -> tuple[int, int]:
        """$GU: watt-seconds this session, Wh accumulated over all sessions."""
        with self._lock:
            return int(self._session_ws), int(self._total_wh)

    def heartbeat(self) -> tuple[int, int, int]:
        with self._lock:
            return self._hs_interval, self._hs_current, self._hs_trigger

    # ----- RAPI-side writes -----------------------------------------------------------

    def set_mode(self, mode: Mode) -> None:
        """$FE / $FS / $FD (and the front panel)."""
        with self._lock:
            self._mode = mode
            self._changed()

    def set_capacity(self, amps: int, kind: Literal["saved", "volatile", "max"]) -> tuple[bool, int]:
        """$SC: clamp into range; (False, clamped) when clamped (evse.md §3)."""
        with self._lock:
            if kind == "max":
                value = max(MIN_AMPS, min(amps, self._hw_max()))
                self._max_configured = value
                self._changed()
                return value == amps, value
            # Remember the request within the installation's limits; a heartbeat
            # fallback caps the pilot only until it is acknowledged.
            stored = max(MIN_AMPS, min(amps, self._upper(heartbeat=False)))
            self._capacity = stored
            if kind == "saved":
                self._saved_capacity = stored
            self._changed()
            value = self._pilot_amps()
            return value == amps, value

    def set_service_level(self, level: ServiceLevel) -> None:
        with self._lock:
            self._service_level = level
            self._changed()

    def set_voltage(self, millivolts: int) -> None:
        with self._lock:
            self._voltage_mv = millivolts

    def set_feature(self, letter: str, enabled: bool) -> bool:
        with self._lock:
            bit = FEATURE_FLAGS.get(letter)
            if bit is None:
                return False
            if enabled:
                self._settings_flags &= ~bit
            else:
                self._settings_flags |= bit
            return True

    def set_ammeter(self, scale: int, offset: int) -> None:
        with self._lock:
            self._scale, self._offset = scale, offset

    def reset(self) -> None:
        """A controller reboot: volatile state back to power-on, then $AB (firmware.md §6.1)."""
        with self._lock:
            last = self._last
            self._boot()
            # _boot() cleared the previous status; compare against it so a visible
            # change (e.g. leaving sleep) still reaches the firmware as $AT after $AB.
            self._last = last
            self._refresh()
            self._boot_pending = True
        self._wakeup()

    # ----- heartbeat supervision ($SY, evse.md §3) ------------------------------------

    def heartbeat_configure(self, interval: int, current: int) -> None:
        with self._lock:
            if interval == 0:
                self._hs_trigger = (
                    HS_MISSED_ACKED if self._hs_trigger == HS_MISSED_NOACK else self._hs_trigger
                )
            self._hs_interval, self._hs_current = interval, current
            self._hs_last = self._clock()
            self._changed()

    def heartbeat_pulse(self) -> bool:
        """A pulse; False (→ $NK) while a missed pulse waits for its acknowledgement."""
        with self._lock:
            self._expire_heartbeat()
            if self._hs_trigger == HS_MISSED_NOACK:
                return False
            self._hs_last = self._clock()
            return True

    def heartbeat_ack(self, cookie: int) -> bool:
        with self._lock:
            if cookie != HS_ACK_COOKIE:
                return False
            if self._hs_trigger == HS_MISSED_NOACK:
                self._hs_trigger = HS_MISSED_ACKED
                self._hs_last = self._clock()
                self._changed()
            return True

    def _expire_heartbeat(self) -> None:
        if (
            self._hs_interval > 0
            and self._hs_trigger != HS_MISSED_NOACK
            and self._clock() - self._hs_last > self._hs_interval
        ):
            self._hs_trigger = HS_MISSED_NOACK  # pilot drops to the heartbeat current
            self._changed()

    # ----- the car and the front panel (control API) ---------------------------------

    def ev_connect(self, connected: bool) -> None:
        with self._lock:
            self.ev_connected = connected
            if not connected:
                self.ev_requesting = False
            self._changed()

    def ev_request(self, requesting: bool) -> None:
        with self._lock:
            self.ev_requesting = requesting and self.ev_connected and self.ev_soc < 100
            self._changed()

    def ev_set_soc(self, soc: float) -> None:
        with self._lock:
            self.ev_soc = soc
            if soc >= 100:
                self.ev_requesting = False
            self._changed()

    def ev_set_max_amps(self, amps: float) -> None:
        with self._lock:
            self.ev_max_amps = amps

    def trigger_fault(self, name: str) -> None:
        with self._lock:
            if name not in FAULTS:
                raise ValueError(f"unknown fault {name!r}; known: {', '.join(FAULTS)}")
            if name not in self._faults:
                self._faults.append(name)
                if name == "gfci":
                    self._gfci_count += 1
                elif name == "no_ground":
                    self._no_ground_count += 1
                elif name == "stuck_relay":
                    self._stuck_relay_count += 1
            self._changed()

    def clear_faults(self) -> None:
        with self._lock:
            self._faults = []
            self._changed()

    def faults(self) -> list[str]:
        with self._lock:
            return list(self._faults)

    def error_flags(self) -> int:
        with self._lock:
            flags = 0
            for name in self._faults:
                flags |= FAULTS[name][2]
            return flags

    # ----- time -------------------------------------------------------------------------

    def tick(self) -> None:
        """Advance energy, elapsed time, the car's battery and heartbeat expiry."""
        with self._lock:
            now = self._clock()
            dt = max(0.0, now - self._last_tick)
            self._last_tick = now
            if self._state() == STATE_C:
                watts = self._actual_amps() * self._voltage() / 1000.0
                self._session_ws += watts * dt
                self._total_wh += watts * dt / 3600.0
                self._elapsed += dt
                self.ev_soc = min(100.0, self.ev_soc + watts * dt / 3600.0 / (self.ev_battery_kwh * 10.0))
                if self.ev_soc >= 100.0:
                    self.ev_requesting = False  # full: the car stops asking (C -> B)
            self._expire_heartbeat()
            self._changed()

    # ----- snapshots for the control API -------------------------------------------------

    def evse_json(self) -> dict[str, object]:
        with self._lock:
            st = self._status()
            t1, t2, _ = self.temperatures()
            return {
                "state": st.state,
                "state_name": STATE_NAMES.get(st.state, "unknown"),
                "pilot_state": st.pilot,
                "vflags": st.vflags,
                "current_capacity": st.capacity,
                "actual_current": round(self._actual_amps(), 1),
                "voltage": self._voltage(),
                "temperature_ds": t1 / 10.0,
                "temperature_mcp": t2 / 10.0,
                "session_energy_wh": round(self._session_ws / 3600.0),
                "total_energy_wh": round(self._total_wh),
                "session_time": int(self._elapsed),
                "service_level": self._service_level,
                "error_flags": self.error_flags(),
                "gfci_count": self._gfci_count,
                "no_ground_count": self._no_ground_count,
                "stuck_relay_count": self._stuck_relay_count,
                "firmware_version": self.firmware_version,
                "protocol_version": self.protocol_version,
                "mcu_id": self.mcu_id,
                "heartbeat": {
                    "interval": self._hs_interval,
                    "current": self._hs_current,
                    "trigger": self._hs_trigger,
                },
            }

    def ev_json(self) -> dict[str, object]:
        with self._lock:
            amps = self._actual_amps()
            return {
                "connected": self.ev_connected,
                "requesting_charge": self.ev_requesting,
                "soc": round(self.ev_soc, 1),
                "battery_capacity_kwh": self.ev_battery_kwh,
                "max_rate_amps": self.ev_max_amps,
                "max_charge_rate_kw": round(self.ev_max_amps * self._voltage() / 1e6, 2),
                "actual_current": round(amps, 1),
                "actual_charge_rate_kw": round(amps * self._voltage() / 1e6, 2),
            }
