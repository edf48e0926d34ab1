"""End to end: the real ``python -m emulator`` over a real TCP socket and a real PTY.

The firmware's boot sequence (firmware.md §6.2) with every reply checked field by field,
then the car and claims: $AT on every state change (evse.md §1), $GG following $SC and
dropping to 0 on $FS (evse.md §2, §4).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

MCU_ID = re.compile(r"^[A-Z0-9]{6}[0-9A-F]{4}$")


def _open(mode: str, start_emulator: Callable[..., Any], connect: Any, tmp_path: Path) -> tuple[Any, Any]:
    """Start an emulator in ``mode`` and connect a client; returns (emulator, client)."""
    if mode == "tcp":
        emu = start_emulator()
        client = connect.tcp(emu.rapi_port)
        # TCP: the first client gets $AB at once, before it sends anything (evse.md §1).
        ab = client.wait_async("AB", lambda t: True)
        assert ab.tokens == ["$AB", "00", "8.2.2"]
    else:
        link = tmp_path / "rapi.pty"
        emu = start_emulator("--serial-mode", "pty", "--serial-pty-path", str(link))
        assert emu.ready["pty_path"] == str(link)
        assert Path(emu.ready["pty_device"]).exists()
        client = connect.serial(str(link))
    return emu, client


@pytest.mark.parametrize("mode", ["tcp", "pty"])
def test_boot_sequence_replies_field_by_field(mode, start_emulator, connect, tmp_path) -> None:
    _emu, c = _open(mode, start_emulator, connect, tmp_path)

    gv = c.cmd("GV")
    assert gv[0] == "$OK"
    assert len(gv) == 3, gv
    assert gv[1] == "8.2.2"
    major, minor, patch = (int(x) for x in gv[2].split("."))
    assert (major, minor, patch) >= (5, 0, 0), "protocol < 5 hides the vehicle (firmware.md §6.2)"
    if mode == "pty":
        # PTY: the first client is known only once it speaks; $AB follows its first reply.
        assert c.wait_async("AB", lambda t: True).tokens == ["$AB", "00", "8.2.2"]

    gf = c.cmd("GF")
    assert gf[0] == "$OK"
    assert [int(x, 16) for x in gf[1:]] == [0, 0, 0]

    ge = c.cmd("GE")
    assert ge[0] == "$OK"
    assert len(ge) == 3
    assert int(ge[1]) == 32
    assert int(ge[2], 16) & 0x0001, "service level Auto on 240 V reports L2"

    gc = c.cmd("GC")
    assert gc == ["$OK", "6", "80", "32", "80"]

    ga = c.cmd("GA")
    assert ga == ["$OK", "220", "0"]

    gi1, gi2 = c.cmd("GI"), c.cmd("GI")
    assert gi1[0] == "$OK"
    assert len(gi1) == 2
    assert MCU_ID.match(gi1[1]), gi1
    assert gi2 == gi1

    gs = c.cmd("GS")
    assert gs[0] == "$OK"
    assert len(gs) == 5
    assert int(gs[1], 16) == 0x01  # A: not connected
    assert int(gs[2]) == 0
    assert int(gs[3], 16) == 0x01
    assert int(gs[4], 16) == 0x0000

    gp = c.cmd("GP")
    assert gp[0] == "$OK"
    assert len(gp) == 4
    assert int(gp[1]) == 250
    assert int(gp[2]) == 250
    assert int(gp[3]) == -2560

    sy = c.cmd("SY", "5", "6")
    assert sy == ["$OK", "5", "6", "0"]

    # Nothing else was sent unasked.
    assert c.asyncs == []


@pytest.mark.parametrize("mode", ["tcp", "pty"])
def test_plug_in_charge_sleep_and_claims(mode, start_emulator, connect, tmp_path) -> None:
    emu, c = _open(mode, start_emulator, connect, tmp_path)
    c.cmd("GV")
    if mode == "pty":
        c.wait_async("AB", lambda t: True)

    assert emu.post("/api/ev/connect").json() == {"success": True}
    at = c.wait_async("AT", lambda t: t[1] == "02")
    assert at.tokens == ["$AT", "02", "02", "32", "0100"]

    assert emu.post("/api/ev/request_charge").json() == {"success": True}
    at = c.wait_async("AT", lambda t: t[1] == "03")
    assert at.tokens == ["$AT", "03", "03", "32", "0140"]  # relay closed, EV connected
    assert c.cmd("GG") == ["$OK", "32000", "240000"]

    # A volatile claim lowers the pilot; the car follows at once and $GC shows it.
    assert c.cmd("SC", "10", "V") == ["$OK", "10"]
    assert c.cmd("GC")[3] == "10"
    assert c.cmd("GG") == ["$OK", "10000", "240000"]
    # Out of range: clamped and $NK with the value set (evse.md §3).
    assert c.cmd("SC", "2", "V") == ["$NK", "6"]
    assert c.cmd("SC", "16", "V") == ["$OK", "16"]

    # Sleep: $OK, then $AT fe; current 0 at once; the EV stays connected (evse.md §2).
    assert c.cmd("FS") == ["$OK"]
    at = c.wait_async("AT", lambda t: True)
    assert at.tokens == ["$AT", "fe", "02", "16", "0100"]
    assert c.cmd("GG") == ["$OK", "0", "240000"]
    gs = c.cmd("GS")
    assert int(gs[1], 16) == 0xFE
    assert int(gs[4], 16) == 0x0100
    energy = c.cmd("GU")
    assert c.cmd("GU") == energy, "energy must not grow while asleep"

    assert c.cmd("FE") == ["$OK"]
    assert c.wait_async("AT", lambda t: True).tokens == ["$AT", "03", "03", "16", "0140"]
    assert c.cmd("FD") == ["$OK"]
    assert c.wait_async("AT", lambda t: True).tokens == ["$AT", "ff", "02", "16", "0100"]
    assert c.cmd("GG") == ["$OK", "0", "240000"]

    # The control API sees the same controller.
    status = emu.get("/api/evse/status").json()
    assert status["state"] == 0xFF
    assert status["actual_current"] == 0
    assert status["rapi_client_connected"] is True


def test_energy_grows_while_charging(start_emulator, connect, tmp_path) -> None:
    emu, c = _open("tcp", start_emulator, connect, tmp_path)
    emu.post("/api/ev/connect")
    emu.post("/api/ev/request_charge")
    c.wait_async("AT", lambda t: t[1] == "03")
    first = int(c.cmd("GU")[1])
    # Poll until the session energy grows (ticks run every 100 ms); deadline 5 s.
    deadline = time.monotonic() + 5
    while int(c.cmd("GU")[1]) <= first:
        assert time.monotonic() < deadline, "session energy did not grow while charging"
        time.sleep(0.05)
    assert int(c.cmd("GS")[2]) >= 0


def test_reset_sends_ab_to_the_connected_client(start_emulator, connect, tmp_path) -> None:
    emu, c = _open("tcp", start_emulator, connect, tmp_path)
    assert c.cmd("FS") == ["$OK"]
    c.wait_async("AT", lambda t: t[1] == "fe")
    assert emu.post("/api/evse/reset").json() == {"success": True}
    assert c.wait_async("AB", lambda t: True).tokens == ["$AB", "00", "8.2.2"]
    # A reboot leaves sleep: the new state follows the $AB.
    assert c.wait_async("AT", lambda t: True).tokens[1] == "01"
    assert c.cmd("GS")[1] == "01"


def test_fault_moves_to_its_own_state_and_opens_the_relay(start_emulator, connect, tmp_path) -> None:
    emu, c = _open("tcp", start_emulator, connect, tmp_path)
    emu.post("/api/ev/connect")
    emu.post("/api/ev/request_charge")
    c.wait_async("AT", lambda t: t[1] == "03")
    assert emu.post("/api/errors/trigger", {"error": "gfci"}).json() == {"success": True}
    at = c.wait_async("AT", lambda t: t[1] == "06")
    assert int(at.tokens[4], 16) & 0x0040 == 0, "relay must open on a fault"
    assert c.cmd("GG")[1] == "0"
    assert c.cmd("GF")[1:] == ["1", "0", "0"]
    emu.post("/api/errors/clear")
    assert c.wait_async("AT", lambda t: t[1] == "03").tokens[4] == "0140"


def test_second_client_is_served_at_once_after_the_first_leaves(start_emulator, connect) -> None:
    emu = start_emulator()
    first = connect.tcp(emu.rapi_port)
    first.wait_async("AB", lambda t: True)
    assert first.cmd("GV")[0] == "$OK"
    first.close()
    # Connect again at once: the reply must come within the firmware's own 500 ms budget
    # (firmware.md §6.1) -- the upstream emulator sleeps 1 s here (evse.md §5).
    second = connect.tcp(emu.rapi_port)
    assert second.cmd("GV", timeout=0.5)[0] == "$OK"
    assert second.asyncs == [], "$AB goes only to the first client after start"


def test_new_connection_replaces_a_stale_one(start_emulator, connect) -> None:
    emu = start_emulator()
    first = connect.tcp(emu.rapi_port)
    first.wait_async("AB", lambda t: True)
    second = connect.tcp(emu.rapi_port)
    assert second.cmd("GV")[0] == "$OK"
    with pytest.raises(ConnectionError):
        first.cmd("GV")


def test_bad_checksum_and_unknown_command_get_nk(start_emulator, connect) -> None:
    emu = start_emulator()
    c = connect.tcp(emu.rapi_port)
    assert c.send(b"$GV^00\r") == ["$NK"]
    assert c.send(b"$GV^35\r")[0] == "$OK"
    assert c.send(b"$GV*C1\r")[0] == "$OK"  # additive: 0x24 + 0x47 + 0x56 = 0xC1
    assert c.send(b"$GV*C2\r") == ["$NK"]
    assert c.send(b"$GV\r")[0] == "$OK"  # no checksum at all
    assert c.send(b"$ZZ^24\r") == ["$NK"]  # well-formed but unknown
    assert c.send(b"$GS :1A^5A\r")[-1] == ":1A"  # sequence id echoed


def test_two_instances_have_distinct_ids(start_emulator, connect) -> None:
    ids = set()
    for _ in range(2):
        emu = start_emulator()
        ids.add(connect.tcp(emu.rapi_port).cmd("GI")[1])
    assert len(ids) == 2


def test_heartbeat_missed_pulse_in_real_time(start_emulator, connect, tmp_path) -> None:
    """$SY 1 6, then silence: the tick notices the missed pulse and the pilot drops to 6 A."""
    emu, c = _open("tcp", start_emulator, connect, tmp_path)
    assert c.cmd("SY", "1", "6") == ["$OK", "1", "6", "0"]
    deadline = time.monotonic() + 5
    while c.cmd("GY")[3] != "2":
        assert time.monotonic() < deadline, "missed heartbeat not detected within 5 s"
        time.sleep(0.1)
    assert c.cmd("GC")[3] == "6"
    assert c.cmd("SY") == ["$NK", "1", "6", "2"]
    assert c.cmd("SY", "165") == ["$OK", "1", "6", "1"]
    assert c.cmd("GC")[3] == "32"
    assert emu.get("/api/evse/status").json()["heartbeat"] == {"interval": 1, "current": 6, "trigger": 1}


def test_pty_client_may_close_and_reopen(start_emulator, connect, tmp_path) -> None:
    emu, first = _open("pty", start_emulator, connect, tmp_path)
    assert first.cmd("GV")[0] == "$OK"
    first.wait_async("AB", lambda t: True)
    first.close()
    again = connect.serial(emu.ready["pty_path"])
    assert again.cmd("GV")[0] == "$OK"
    assert again.cmd("GS")[1] == "01"
