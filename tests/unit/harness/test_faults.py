"""harness.faults.FaultEngine: which frames a plan hits, in which order, and that popping a
plan undoes exactly that plan."""

from __future__ import annotations

import threading

import pytest

from harness.faults import FaultEngine, FaultError, FaultHandle, FaultPlan, _with_port
from harness.trace import EVSE_TO_FW, FW_TO_EVSE, checksum_ok

GS = b"$GS^30\r"
OK = b"$OK^20\r"


def test_no_plan_passes_everything_untouched() -> None:
    engine = FaultEngine()
    for direction in (FW_TO_EVSE, EVSE_TO_FW):
        d = engine.decide(direction, GS)
        assert (d.deliver, d.frame, d.delay, d.fault) == (True, GS, 0.0, None)


def test_drop_takes_exactly_n_frames_in_its_direction_only() -> None:
    engine = FaultEngine()
    token = engine.push(FaultPlan(drop=2, direction=FW_TO_EVSE))
    assert engine.decide(EVSE_TO_FW, OK).deliver
    fates = [engine.decide(FW_TO_EVSE, GS) for _ in range(3)]
    assert [d.deliver for d in fates] == [False, False, True]
    assert [d.fault for d in fates] == ["dropped", "dropped", None]
    assert engine.pop(token)["dropped"] == 2


def test_corrupt_changes_only_the_checksum_of_n_frames() -> None:
    engine = FaultEngine()
    engine.push(FaultPlan(corrupt=1))
    first, second = engine.decide(EVSE_TO_FW, OK), engine.decide(EVSE_TO_FW, OK)
    assert first.deliver
    assert first.fault == "corrupted"
    assert not checksum_ok(first.frame)
    assert first.frame.startswith(b"$OK^")
    assert second.frame == OK
    assert second.fault is None


def test_delay_applies_while_active_and_the_longest_wins() -> None:
    engine = FaultEngine()
    a = engine.push(FaultPlan(delay_ms=200))
    b = engine.push(FaultPlan(delay_ms=600))
    d = engine.decide(EVSE_TO_FW, OK)
    assert (d.deliver, d.delay, d.fault) == (True, 0.6, "delayed")
    assert engine.decide(FW_TO_EVSE, GS).delay == 0.0  # the default direction is evse->fw
    engine.pop(b)
    assert engine.decide(EVSE_TO_FW, OK).delay == 0.2
    engine.pop(a)
    assert engine.decide(EVSE_TO_FW, OK).delay == 0.0


def test_stall_swallows_towards_the_firmware_only() -> None:
    engine = FaultEngine()
    token = engine.push(FaultPlan(stall=True))
    assert engine.decide(FW_TO_EVSE, GS).deliver
    d = engine.decide(EVSE_TO_FW, OK)
    assert (d.deliver, d.fault) == (False, "stalled")
    engine.pop(token)
    assert engine.decide(EVSE_TO_FW, OK).deliver


def test_stall_wins_over_drop_and_drop_over_corrupt() -> None:
    engine = FaultEngine()
    engine.push(FaultPlan(drop=1, corrupt=1))
    assert engine.decide(EVSE_TO_FW, OK).fault == "dropped"
    assert engine.decide(EVSE_TO_FW, OK).fault == "corrupted"
    engine.push(FaultPlan(stall=True))
    assert engine.decide(EVSE_TO_FW, OK).fault == "stalled"


def test_pop_undoes_only_its_own_unused_counts() -> None:
    engine = FaultEngine()
    outer = engine.push(FaultPlan(drop=1))
    inner = engine.push(FaultPlan(drop=5))
    assert engine.decide(EVSE_TO_FW, OK).fault == "dropped"  # the outer plan's one frame
    engine.pop(inner)
    assert engine.decide(EVSE_TO_FW, OK).deliver  # outer used up, inner gone
    assert engine.counts(outer)["dropped"] == 1


def test_refusing_follows_the_plans() -> None:
    engine = FaultEngine()
    before = engine.refusing
    token = engine.push(FaultPlan(refuse=True))
    during = engine.refusing
    engine.note_disconnected()
    assert engine.pop(token)["disconnected"] == 1
    assert (before, during, engine.refusing) == (False, True, False)


def test_wait_returns_once_counts_are_reached_and_names_the_plan_when_not() -> None:
    engine = FaultEngine()
    plan = FaultPlan(drop=2)
    handle = FaultHandle(engine, engine.push(plan), plan)
    t = threading.Timer(0.05, lambda: [engine.decide(EVSE_TO_FW, OK) for _ in range(2)])
    t.start()
    assert handle.wait(timeout=5.0, dropped=2)["dropped"] == 2
    with pytest.raises(FaultError, match=r"drop 2, evse->fw.*wanted"):
        handle.wait(timeout=0.05, dropped=3)


def test_plan_validation() -> None:
    with pytest.raises(ValueError, match="direction"):
        FaultPlan(drop=1, direction="sideways")
    with pytest.raises(ValueError):
        FaultPlan(drop=-1)
    assert FaultPlan().describe() == "no fault"
    assert FaultPlan(delay_ms=600).describe() == "delay 600 ms, evse->fw"


def test_emulator_restart_pins_the_ports_it_got() -> None:
    argv = ["python", "-m", "emulator", "--serial-tcp-port", "0", "--web-port", "0"]
    pinned = _with_port(_with_port(argv, "--serial-tcp-port", 4001), "--web-port", 4002)
    assert pinned[-4:] == ["--serial-tcp-port", "4001", "--web-port", "4002"]
    assert _with_port(["emu"], "--web-port", 5)[-2:] == ["--web-port", "5"]
