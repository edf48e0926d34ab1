"""Every command of evse.md §3 through the command table, with the reply shapes the
firmware parses (firmware.md §6.2)."""

from __future__ import annotations

import pytest

from emulator import commands, rapi
from emulator.model import Controller


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ctl(clock: FakeClock) -> Controller:
    c = Controller(clock=clock, mcu_id="EMTEST00AB")
    c.pop_events()
    return c


def send(
    ctl: Controller, code: str, *args: str, checksum: str = "xor", seq_id: int | None = None
) -> list[str]:
    frame = rapi.command(code, *args, checksum=checksum, seq_id=seq_id)  # type: ignore[arg-type]
    out = commands.handle(ctl, rapi.parse_command(frame[:-1]))
    assert out.endswith(b"\r")
    body, _, digits = out[:-1].rpartition(b"^")
    assert int(digits, 16) == rapi.xor_checksum(body)
    assert digits == digits.upper()
    return body.decode().split()


def test_gv(ctl: Controller) -> None:
    assert send(ctl, "GV") == ["$OK", "8.2.2", "5.2.1"]


def test_gf_counters_are_hex(ctl: Controller) -> None:
    for _ in range(11):
        ctl.trigger_fault("gfci")
        ctl.clear_faults()
    assert send(ctl, "GF") == ["$OK", "b", "0", "0"]


def test_ge(ctl: Controller) -> None:
    assert send(ctl, "GE") == ["$OK", "32", "0001"]
    send(ctl, "FF", "D", "0")
    assert send(ctl, "GE") == ["$OK", "32", "0003"]


def test_gc_pilot_follows_sc(ctl: Controller) -> None:
    assert send(ctl, "GC") == ["$OK", "6", "80", "32", "80"]
    send(ctl, "SC", "12", "V")
    assert send(ctl, "GC") == ["$OK", "6", "80", "12", "80"]


def test_ga_and_sa(ctl: Controller) -> None:
    assert send(ctl, "GA") == ["$OK", "220", "0"]
    assert send(ctl, "SA", "230", "5") == ["$OK"]
    assert send(ctl, "GA") == ["$OK", "230", "5"]
    assert send(ctl, "SA", "x", "5") == ["$NK"]
    assert send(ctl, "SA", "1") == ["$NK"]


def test_gi(ctl: Controller) -> None:
    assert send(ctl, "GI") == ["$OK", "EMTEST00AB"]


def test_gs(ctl: Controller, clock: FakeClock) -> None:
    assert send(ctl, "GS") == ["$OK", "01", "0", "01", "0000"]
    ctl.ev_connect(True)
    ctl.ev_request(True)
    clock.now += 42
    ctl.tick()
    assert send(ctl, "GS") == ["$OK", "03", "42", "03", "0140"]


def test_gp(ctl: Controller) -> None:
    assert send(ctl, "GP") == ["$OK", "250", "250", "-2560"]


def test_gg_exactly_two_values(ctl: Controller) -> None:
    assert send(ctl, "GG") == ["$OK", "0", "240000"]
    ctl.ev_connect(True)
    ctl.ev_request(True)
    assert send(ctl, "GG") == ["$OK", "32000", "240000"]


def test_gu_watt_seconds_then_wh(ctl: Controller, clock: FakeClock) -> None:
    ctl.ev_connect(True)
    ctl.ev_request(True)
    clock.now += 10
    ctl.tick()
    assert send(ctl, "GU") == ["$OK", str(32 * 240 * 10), "21"]  # 76800 Ws = 21.3 Wh


@pytest.mark.parametrize(("code", "state"), [("FS", "fe"), ("FD", "ff"), ("FE", "01")])
def test_fe_fs_fd_reply_ok_and_queue_at(ctl: Controller, code: str, state: str) -> None:
    if code == "FE":
        ctl.set_mode("sleep")
        ctl.pop_events()
    assert send(ctl, code) == ["$OK"]
    assert ctl.pop_events() == [("AT", [state, "01", "32", "0000"])]


@pytest.mark.parametrize(
    ("args", "reply"),
    [
        (("16", "V"), ["$OK", "16"]),
        (("16",), ["$OK", "16"]),
        (("40", "M"), ["$OK", "40"]),
        (("5", "V"), ["$NK", "6"]),
        (("99", "V"), ["$NK", "80"]),
        (("99",), ["$NK", "80"]),
        (("16", "X"), ["$NK"]),
        (("abc",), ["$NK"]),
        ((), ["$NK"]),
    ],
)
def test_sc(ctl: Controller, args: tuple[str, ...], reply: list[str]) -> None:
    assert send(ctl, "SC", *args) == reply


def test_sv_sets_the_voltage_used_for_power(ctl: Controller) -> None:
    assert send(ctl, "SV", "230000") == ["$OK"]
    assert send(ctl, "GG") == ["$OK", "0", "230000"]
    assert send(ctl, "SV", "-5") == ["$NK"]
    assert send(ctl, "SV") == ["$NK"]


@pytest.mark.parametrize("letter", ["D", "V", "G", "R", "T", "F", "B"])
def test_ff(ctl: Controller, letter: str) -> None:
    assert send(ctl, "FF", letter, "0") == ["$OK"]
    assert send(ctl, "FF", letter, "1") == ["$OK"]
    assert send(ctl, "GE") == ["$OK", "32", "0001"]


def test_ff_refuses_bad_arguments(ctl: Controller) -> None:
    assert send(ctl, "FF", "Q", "1") == ["$NK"]
    assert send(ctl, "FF", "D", "2") == ["$NK"]
    assert send(ctl, "FF") == ["$NK"]


@pytest.mark.parametrize(
    ("arg", "flags", "hw_max"), [("1", "0020", "16"), ("2", "0021", "80"), ("A", "0001", "80")]
)
def test_sl(ctl: Controller, arg: str, flags: str, hw_max: str) -> None:
    assert send(ctl, "SL", arg) == ["$OK"]
    assert send(ctl, "GE")[2] == flags
    assert send(ctl, "GC")[2] == hw_max


def test_sl_refuses_other_levels(ctl: Controller) -> None:
    assert send(ctl, "SL", "3") == ["$NK"]


def test_sb(ctl: Controller) -> None:
    assert send(ctl, "SB") == ["$OK"]


def test_sy_configure_pulse_miss_ack(ctl: Controller, clock: FakeClock) -> None:
    assert send(ctl, "SY") == ["$OK", "0", "0", "0"]  # pulse with supervision off
    assert send(ctl, "SY", "5", "6") == ["$OK", "5", "6", "0"]
    clock.now += 1
    assert send(ctl, "SY") == ["$OK", "5", "6", "0"]
    clock.now += 6
    ctl.tick()
    assert send(ctl, "SY") == ["$NK", "5", "6", "2"]
    assert send(ctl, "GC")[3] == "6"
    assert send(ctl, "SY", "164") == ["$NK", "5", "6", "2"]
    assert send(ctl, "SY", "165") == ["$OK", "5", "6", "1"]
    assert send(ctl, "GC")[3] == "32"
    assert send(ctl, "SY") == ["$OK", "5", "6", "1"]
    assert send(ctl, "GY") == ["$OK", "5", "6", "1"]
    assert send(ctl, "SY", "x") == ["$NK", "5", "6", "1"]
    assert send(ctl, "SY", "1", "2", "3") == ["$NK", "5", "6", "1"]


def test_fr_restarts_and_queues_ab(ctl: Controller) -> None:
    assert send(ctl, "FR") == ["$OK"]
    assert ctl.pop_events()[0] == ("AB", ["00", "8.2.2"])


def test_other_upstream_commands(ctl: Controller) -> None:
    assert send(ctl, "G0") == ["$OK", "0"]
    assert len(send(ctl, "GT")) == 7
    assert send(ctl, "GH") == ["$OK", "0"]
    for code in ("FP", "FB", "F0", "F1"):
        assert send(ctl, code, "1")[0] == "$OK"


@pytest.mark.parametrize("code", ["ZZ", "GR", "GZ", "S4", "XX"])
def test_unknown_commands_get_nk(ctl: Controller, code: str) -> None:
    assert send(ctl, code) == ["$NK"]


def test_bad_checksum_gets_nk_and_changes_nothing(ctl: Controller) -> None:
    out = commands.handle(ctl, rapi.parse_command(b"$FS^00"))
    assert out == rapi.reply(False)
    assert ctl.status().state == 1


@pytest.mark.parametrize("checksum", ["xor", "add", "none"])
def test_every_checksum_kind_is_served(ctl: Controller, checksum: str) -> None:
    assert send(ctl, "GV", checksum=checksum) == ["$OK", "8.2.2", "5.2.1"]


def test_sequence_id_is_echoed_on_ok_and_nk(ctl: Controller) -> None:
    assert send(ctl, "GS", seq_id=0x07) == ["$OK", "01", "0", "01", "0000", ":07"]
    assert send(ctl, "SC", "99", "V", seq_id=0xFF) == ["$NK", "80", ":FF"]
    assert send(ctl, "ZZ", seq_id=0x10) == ["$NK", ":10"]
