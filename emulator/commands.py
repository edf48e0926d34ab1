"""The RAPI command table (evse.md §3): one parsed command in, one reply frame out.

Reply shapes follow the real controller's ``rapi_proc``: hex where the firmware parses hex
(states, vflags, settings flags, fault counters), decimal elsewhere. Anything not in the
table, a bad checksum or a wrong argument count gets ``$NK`` like a real controller.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from emulator import rapi
from emulator.model import Controller

Result = tuple[bool, list[str]]
Handler = Callable[[Controller, list[str]], Result]


def _int(text: str, base: int = 10) -> int | None:
    try:
        return int(text, base)
    except ValueError:
        return None


def _gv(c: Controller, args: list[str]) -> Result:
    return True, [c.firmware_version, c.protocol_version]


def _gf(c: Controller, args: list[str]) -> Result:
    return True, [f"{n:x}" for n in c.fault_counts()]


def _ge(c: Controller, args: list[str]) -> Result:
    amps, flags = c.settings()
    return True, [str(amps), f"{flags:04x}"]


def _gc(c: Controller, args: list[str]) -> Result:
    return True, [str(n) for n in c.capacity_info()]


def _ga(c: Controller, args: list[str]) -> Result:
    return True, [str(n) for n in c.ammeter()]


def _gi(c: Controller, args: list[str]) -> Result:
    return True, [c.mcu_id]


def _gs(c: Controller, args: list[str]) -> Result:
    st = c.status()
    return True, [f"{st.state:02x}", str(c.elapsed_s()), f"{st.pilot:02x}", f"{st.vflags:04x}"]


def _gp(c: Controller, args: list[str]) -> Result:
    return True, [str(t) for t in c.temperatures()]


def _gg(c: Controller, args: list[str]) -> Result:
    return True, [str(n) for n in c.meter()]


def _gu(c: Controller, args: list[str]) -> Result:
    return True, [str(n) for n in c.energy()]


def _g0(c: Controller, args: list[str]) -> Result:
    return True, ["1" if c.status().vflags & 0x0100 else "0"]


def _gt(c: Controller, args: list[str]) -> Result:
    t = time.gmtime()
    return True, [str(v) for v in (t.tm_year % 100, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec)]


def _gh(c: Controller, args: list[str]) -> Result:
    return True, ["0"]  # no kWh limit set


def _gy(c: Controller, args: list[str]) -> Result:
    return True, [str(n) for n in c.heartbeat()]


def _mode(mode: str) -> Handler:
    def handler(c: Controller, args: list[str]) -> Result:
        c.set_mode("active" if mode == "E" else "sleep" if mode == "S" else "disabled")
        return True, []

    return handler


def _fr(c: Controller, args: list[str]) -> Result:
    c.reset()  # $AB follows the $OK, as after a real reboot
    return True, []


def _ff(c: Controller, args: list[str]) -> Result:
    if len(args) != 2 or args[1] not in ("0", "1"):
        return False, []
    return c.set_feature(args[0].upper(), args[1] == "1"), []


def _accept(c: Controller, args: list[str]) -> Result:
    return True, []  # display/button commands: no effect on the model


def _sc(c: Controller, args: list[str]) -> Result:
    if not 1 <= len(args) <= 2:
        return False, []
    amps = _int(args[0])
    suffix = args[1].upper() if len(args) == 2 else ""
    if amps is None or suffix not in ("", "V", "M"):
        return False, []
    kind = {"": "saved", "V": "volatile", "M": "max"}[suffix]
    ok, value = c.set_capacity(amps, kind)  # type: ignore[arg-type]
    return ok, [str(value)]


def _sl(c: Controller, args: list[str]) -> Result:
    level = {"1": "L1", "2": "L2", "A": "Auto"}.get(args[0].upper()) if len(args) == 1 else None
    if level is None:
        return False, []
    c.set_service_level(level)  # type: ignore[arg-type]
    return True, []


def _sv(c: Controller, args: list[str]) -> Result:
    mv = _int(args[0]) if len(args) == 1 else None
    if mv is None or mv <= 0:
        return False, []
    c.set_voltage(mv)
    return True, []


def _sa(c: Controller, args: list[str]) -> Result:
    values = [_int(a) for a in args]
    if len(values) != 2 or values[0] is None or values[1] is None:
        return False, []
    c.set_ammeter(values[0], values[1])
    return True, []


def _sy(c: Controller, args: list[str]) -> Result:
    """Heartbeat supervision (evse.md §3): configure, pulse, or acknowledge a missed pulse."""
    numbers = [_int(a) for a in args]
    if any(n is None or n < 0 for n in numbers) or len(args) > 2:
        return False, [str(n) for n in c.heartbeat()]
    if not args:
        ok = c.heartbeat_pulse()
    elif len(args) == 1:
        ok = c.heartbeat_ack(numbers[0] or 0)
    else:
        c.heartbeat_configure(numbers[0] or 0, numbers[1] or 0)
        ok = True
    return ok, [str(n) for n in c.heartbeat()]


COMMANDS: dict[str, Handler] = {
    "GV": _gv,
    "GF": _gf,
    "GE": _ge,
    "GC": _gc,
    "GA": _ga,
    "GI": _gi,
    "GS": _gs,
    "GP": _gp,
    "GG": _gg,
    "GU": _gu,
    "G0": _g0,
    "GT": _gt,
    "GH": _gh,
    "GY": _gy,
    "FE": _mode("E"),
    "FS": _mode("S"),
    "FD": _mode("D"),
    "FR": _fr,
    "FF": _ff,
    "FP": _accept,
    "FB": _accept,
    "F0": _accept,
    "F1": _accept,
    "SB": _accept,
    "SC": _sc,
    "SL": _sl,
    "SV": _sv,
    "SA": _sa,
    "SY": _sy,
}


def handle(controller: Controller, cmd: rapi.Command) -> bytes:
    """The reply frame for one command."""
    if not cmd.valid:
        return rapi.reply(False, seq_id=cmd.seq_id)
    handler = COMMANDS.get(cmd.code)
    if handler is None:
        return rapi.reply(False, seq_id=cmd.seq_id)
    ok, values = handler(controller, cmd.args)
    return rapi.reply(ok, values, cmd.seq_id)
