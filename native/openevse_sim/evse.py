"""The EVSE side: boot reads, periodic polls and async events over RAPI (firmware.md §6.2).

Keeps the state `/status` shows (§7.1). `state` stays 0 until the first `$GS` reply."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable
from typing import Any

from openevse_sim.rapi import RapiClient, Reply
from openevse_sim.tasks import spawn

GV_RETRY = 10.0
GS_FIRST_RETRY = 1.0  # until the first good $GS
GS_PERIOD = 30.0
SY_ENABLE_PERIOD = 30.0
TICK = 1.0

STATE_NAMES = {
    0: "starting",
    1: "not connected",
    2: "connected",
    3: "charging",
    4: "vent required",
    5: "diode check failed",
    6: "gfci fault",
    7: "no ground",
    8: "stuck relay",
    9: "gfci self-test failure",
    10: "over temperature",
    11: "over current",
    254: "sleeping",
    255: "disabled",
}

VFLAG_EV_CONNECTED = 0x0100
TEMP_ABSENT = -2560

ChangeHandler = Callable[[dict[str, Any]], None]


def _int(text: str, base: int = 10) -> int | None:
    try:
        return int(text, base)
    except ValueError:
        return None


def _version_tuple(text: str) -> tuple[int, int, int] | None:
    parts = text.split(".")
    if len(parts) < 3:
        return None
    numbers = [_int(p) for p in parts[:3]]
    if any(n is None for n in numbers):
        return None
    return (numbers[0] or 0, numbers[1] or 0, numbers[2] or 0)


class Evse:
    """Polls the controller and mirrors its state; `on_change` gets partial status events."""

    def __init__(self, rapi: RapiClient, on_change: ChangeHandler, heartbeat: tuple[int, int]) -> None:
        self.rapi = rapi
        self.on_change = on_change
        self.heartbeat_args = heartbeat
        self.connected = False
        self.protocol: tuple[int, int, int] | None = None
        self.firmware = ""
        self.protocol_text = ""
        self.serial = ""
        self.state = 0
        self.elapsed = 0
        self.pilot_state = 0
        self.vflags = 0
        self.pilot = 0
        self.amp = 0  # mA (AMPS_SCALE_FACTOR 1000)
        self.voltage = 240.0
        self.temps = [TEMP_ABSENT, TEMP_ABSENT, TEMP_ABSENT]
        self.min_current_hard = 6
        self.max_current_hard = 80
        self.max_current_soft = 32
        self.settings_flags = 0
        self.gfci_count = 0
        self.nognd_count = 0
        self.stuck_count = 0
        self.scale = 220
        self.offset = 0
        self.heartbeat_enabled = False
        self.have_status = False  # set by the first good $GS
        self._boot_requested = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._energy_task: asyncio.Task[None] | None = None
        self._restart_task: asyncio.Task[Reply | None] | None = None

    # --- events ---------------------------------------------------------------------------
    def handle_event(self, tokens: list[str]) -> None:
        """`$AT`/`$AB`/`$ST` from the controller (§6.1)."""
        kind = tokens[0]
        if kind in ("$AT", "$ST") and not self.have_status:
            return  # `state` stays 0 until the first $GS reply (§7.1); that read covers it
        if kind == "$AT" and len(tokens) >= 5:
            state, pilot_state = _int(tokens[1], 16), _int(tokens[2], 16)
            capacity, vflags = _int(tokens[3]), _int(tokens[4], 16)
            if None in (state, pilot_state, capacity, vflags):
                return
            self._set_state(state or 0, vflags=vflags, pilot=capacity, pilot_state=pilot_state)
        elif kind == "$ST" and len(tokens) >= 2:
            state = _int(tokens[1], 16)
            if state is not None:
                self._set_state(state)
        elif kind == "$AB":
            print("DBUG: EVSE controller booted, re-reading settings", flush=True)
            self._boot_requested.set()

    def _set_state(
        self,
        state: int,
        vflags: int | None = None,
        pilot: int | None = None,
        pilot_state: int | None = None,
    ) -> None:
        changes: dict[str, Any] = {}
        was_charging = self.state == 3
        if state != self.state:
            self.state = state
            changes["state"] = state
            changes["status"] = self.status_text
        if vflags is not None and vflags != self.vflags:
            old_vehicle = self.vehicle
            self.vflags = vflags
            changes["flags"] = vflags
            if self.vehicle != old_vehicle:
                changes["vehicle"] = self.vehicle
        if pilot is not None and pilot != self.pilot:
            self.pilot = pilot
            changes["pilot"] = pilot
        if pilot_state is not None:
            self.pilot_state = pilot_state
        if changes:
            self.on_change(changes)
        if was_charging and self.state != 3 and self._task is not None:
            self._energy_task = spawn(self._read_energy(), "evse-energy")

    @property
    def vehicle(self) -> int:
        return 1 if self.vflags & VFLAG_EV_CONNECTED else 0

    @property
    def status_text(self) -> str:
        if self.state == 3:
            return "active"
        if self.state in (254, 255):
            return "disabled"
        if self.state == 0:
            return "starting"
        return "active" if self.state in (1, 2) else "error"

    # --- loop -----------------------------------------------------------------------------
    def start(self) -> None:
        self._task = spawn(self._run(), "evse")

    async def stop(self) -> None:
        for task in (self._task, self._energy_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _run(self) -> None:
        if not self.rapi.is_open:
            return
        while not await self._connect():
            # Deviation (README): a controller boot event ($AB) retries $GV at once instead of
            # waiting out the 10 s, so a link that came up just after our first $GV is used at once.
            self._boot_requested.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._boot_requested.wait(), GV_RETRY)
        self._boot_requested.clear()
        await self._boot_reads()
        now = time.monotonic()
        next_gs = now
        next_sy_enable = now
        while True:
            if self._boot_requested.is_set():
                self._boot_requested.clear()
                await self._boot_reads()
            now = time.monotonic()
            if now >= next_gs:
                await self._read_status()
                await self._read_temps()
                # Until a first $GS has answered, `state` is 0 (§7.1): a lost reply is retried in
                # 1 s rather than a whole period later (README: deviations).
                next_gs = now + (GS_PERIOD if self.have_status else GS_FIRST_RETRY)
            if not self.heartbeat_enabled and now >= next_sy_enable:
                next_sy_enable = now + SY_ENABLE_PERIOD
                await self._enable_heartbeat()
            elif self.heartbeat_enabled:
                await self._pulse_heartbeat()
            if self.state == 3:
                await self._read_energy()
                await self.rapi.command("$GC")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._boot_requested.wait(), TICK)

    async def _connect(self) -> bool:
        reply = await self.rapi.command("$GV")
        if reply is None or not reply.ok or len(reply.tokens) < 2:
            print("DBUG: EVSE not answering $GV, retrying in 10 s", flush=True)
            return False
        version = _version_tuple(reply.tokens[1])
        if version is None:
            return False
        self.firmware, self.protocol_text, self.protocol = reply.tokens[0], reply.tokens[1], version
        self.connected = True
        print(f"DBUG: EVSE connected, firmware {self.firmware} protocol {self.protocol_text}", flush=True)
        self.on_change({"evse_connected": 1, "rapi_connected": 1})
        return True

    async def _boot_reads(self) -> None:
        reply = await self.rapi.command("$GF")
        if _ok(reply, 3):
            assert reply is not None
            self.gfci_count = _int(reply.tokens[0], 16) or 0
            self.nognd_count = _int(reply.tokens[1], 16) or 0
            self.stuck_count = _int(reply.tokens[2], 16) or 0
        reply = await self.rapi.command("$GE")
        if _ok(reply, 2):
            assert reply is not None
            self.pilot = _int(reply.tokens[0]) or self.pilot
            self.settings_flags = _int(reply.tokens[1], 16) or 0
        reply = await self.rapi.command("$GC")
        if _ok(reply, 4):
            assert reply is not None
            values = [_int(t) for t in reply.tokens[:4]]
            if None not in values:
                self.min_current_hard, self.max_current_hard = values[0] or 0, values[1] or 0
                self.pilot, self.max_current_soft = values[2] or 0, values[3] or 0
        reply = await self.rapi.command("$GA")
        if _ok(reply, 2):
            assert reply is not None
            self.scale, self.offset = _int(reply.tokens[0]) or 0, _int(reply.tokens[1]) or 0
        for _ in range(2):  # the real firmware asks twice
            reply = await self.rapi.command("$GI")
            if _ok(reply, 1):
                assert reply is not None
                self.serial = reply.tokens[0]
        if self.protocol is not None and self.protocol >= (6, 0, 0):
            await self.rapi.command("$GR")
            await self.rapi.command("$GZ")
        self.on_change({"pilot": self.pilot, "max_current": self.max_current_soft})

    async def _read_status(self) -> None:
        reply = await self.rapi.command("$GS")
        legacy = self.protocol is not None and self.protocol < (5, 0, 0)
        if reply is None or not reply.ok:
            return
        if legacy:  # < 5.0.0: 3 tokens, decimal state, no vflags (§6.2)
            if len(reply.tokens) < 3:
                return
            state, elapsed = _int(reply.tokens[0]), _int(reply.tokens[1])
            if state is None or elapsed is None:
                return
            self._set_state(state)
            self.have_status = True
        else:
            if len(reply.tokens) < 4:
                return
            state, elapsed = _int(reply.tokens[0], 16), _int(reply.tokens[1])
            pilot_state, vflags = _int(reply.tokens[2], 16), _int(reply.tokens[3], 16)
            if state is None or elapsed is None or vflags is None:
                return
            self._set_state(state, vflags=vflags, pilot_state=pilot_state)
        self.have_status = True
        if elapsed != self.elapsed:
            self.elapsed = elapsed
            self.on_change({"elapsed": elapsed})

    async def _read_temps(self) -> None:
        reply = await self.rapi.command("$GP")
        if _ok(reply, 3):
            assert reply is not None
            temps = [_int(t) for t in reply.tokens[:3]]
            if None not in temps:
                self.temps = [t if t is not None else TEMP_ABSENT for t in temps]
                # The periodic full-status event follows the temperature read (firmware.md §3.3).
                self.on_change({"__full__": True})

    async def _read_energy(self) -> None:
        reply = await self.rapi.command("$GG")
        if _ok(reply, 2):
            assert reply is not None
            milliamps, millivolts = _int(reply.tokens[0]), _int(reply.tokens[1])
            if milliamps is None or millivolts is None:
                return
            self.amp = milliamps
            if millivolts > 0:
                self.voltage = millivolts / 1000
            # Sent every cycle, changed or not: a charging unit emits amp events each second (§3.3).
            self.on_change({"amp": self.amp, "voltage": self.voltage})

    async def _enable_heartbeat(self) -> None:
        interval, current = self.heartbeat_args
        reply = await self.rapi.command(f"$SY {interval} {current}")
        if reply is not None and reply.ok and len(reply.tokens) >= 3:
            self.heartbeat_enabled = True

    async def _pulse_heartbeat(self) -> None:
        reply = await self.rapi.command("$SY")
        if reply is not None and reply.valid and not reply.ok:
            await self.rapi.command("$SY 165")

    async def apply_target(
        self, state: str | None, pilot: int | None, pause_uses_disabled: bool = False
    ) -> bool:
        """Seam for the claims module (§6.2 "claim evaluation"): `$FE` for "active", `$FS` (or `$FD`
        with `pause_uses_disabled`) for "disabled", then `$SC <A> V` (volatile pilot).
        True when every command was acknowledged; `$NK <clamped A>` still updates the pilot."""
        ok = True
        if state is not None:
            command = "$FE" if state == "active" else ("$FD" if pause_uses_disabled else "$FS")
            reply = await self.rapi.command(command)
            ok = reply is not None and reply.ok
        if pilot is not None:
            reply = await self.rapi.command(f"$SC {int(pilot)} V")
            if reply is None or not reply.valid or len(reply.tokens) < 1:
                return False
            amps = _int(reply.tokens[0])
            if amps is not None and amps != self.pilot:
                self.pilot = amps
                self.on_change({"pilot": amps})
            ok = ok and reply.ok
        return ok

    def restart_controller(self) -> None:
        """`POST /restart {"device":"evse"}`: `$FR`; the controller answers with `$AB` later."""
        if self._task is not None:
            self._restart_task = spawn(self.rapi.command("$FR"), "evse-restart")

    def set_voltage(self, volts: float) -> None:
        """`POST /status {"voltage": V}` (§7.1)."""
        if volts != self.voltage:
            self.voltage = volts
            self.on_change({"voltage": volts})


def _ok(reply: Reply | None, tokens: int) -> bool:
    return reply is not None and reply.ok and len(reply.tokens) >= tokens


def log_error(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
