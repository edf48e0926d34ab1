"""What the fault tests share (tests/harness/test_faults_*.py): the pair's views (status,
traces), polling with deadlines, and the firmware behaviours every fault test ends with
(answered again, boot reads after `$AB`, the car seen). Specs: firmware.md, evse.md."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import requests

from harness.fault_bridge import FaultBridge
from harness.pair import Pair
from harness.trace import EVSE_TO_FW, FW_TO_EVSE, TraceEntry, frames, read_trace, reply_gaps
from harness.waiting import NotYet, wait_until

T = TypeVar("T")
RAPI_TIMEOUT = 0.5  # firmware.md §6.1
DELAY_MS = 600
HEARTBEAT_TIMEOUT = 5  # the smallest accepted value (firmware.md §4.1)
# §6.2: with the heartbeat enabled the firmware pulses `$SY` every 1 s, so a few seconds
# always carry traffic; state changes reach it as `$AT` at once (evse.md §1).
TRAFFIC_DEADLINE = 10.0
BOOT_READS = ["GF", "GE", "GC", "GA", "GI", "GI"]  # firmware.md §6.2, after connect / `$AB`


def eventually(check: Callable[[], T], what: str, timeout: float = TRAFFIC_DEADLINE) -> T:
    """Poll until ``check`` returns without an AssertionError/NotYet/HTTP error."""

    def attempt(_: float) -> tuple[T]:
        try:
            return (check(),)  # a tuple: a check returning None or False still counts as done
        except AssertionError as exc:
            raise NotYet(str(exc) or "assertion failed") from exc

    return wait_until(
        attempt,
        instance="test",
        what=what,
        timeout=timeout,
        transient=(NotYet, requests.RequestException, ValueError, OSError),
    )[0]


def require(condition: bool) -> None:
    assert condition


def serial(pair: Pair) -> FaultBridge:
    bridge = pair.serial  # HARNESS_BRIDGE=python: the faultable bridge
    assert isinstance(bridge, FaultBridge)
    return bridge


def trace(pair: Pair) -> list[TraceEntry]:
    assert serial(pair).trace_path == pair.trace_path == pair.run_dir / "rapi-trace.jsonl"
    return read_trace(pair.trace_path)


def emulator_trace(pair: Pair) -> list[TraceEntry]:
    """The EVSE's own record (its ``--trace``): what it received and sent."""
    assert pair.emulator is not None
    path = pair.emulator.spec.trace_path
    assert path is not None
    return read_trace(path)


def status(pair: Pair) -> dict[str, Any]:
    result: dict[str, Any] = pair.api.get_json("/status")
    return result


def evse_status(pair: Pair) -> dict[str, Any]:
    result: dict[str, Any] = pair.emulator_api.get_json("/api/evse/status")
    return result


def failures(pair: Pair) -> int:
    """Commands the firmware sent that did not succeed (`comm_sent - comm_success`, §7.1);
    the smallest of three reads, so a command in flight during one read does not count."""
    reads = [status(pair) for _ in range(3)]
    return min(int(r["comm_sent"]) - int(r["comm_success"]) for r in reads)


def plug_in_is_seen(pair: Pair) -> None:
    """The car is connected at the EVSE and the firmware reports it (`$AT`, §7.1)."""
    assert pair.emulator_api.post("/api/ev/connect", json={}).status_code == 200

    def seen() -> None:
        st = status(pair)
        assert (st["vehicle"], st["state"]) == (1, 2), {k: st[k] for k in ("vehicle", "state")}

    eventually(seen, "the firmware sees the car plugged in")


def answered_again(pair: Pair, since: float) -> None:
    """A command after ``since`` got a reply in time on the wire, and the firmware counted a
    success (`comm_success`, §7.1)."""
    before = status(pair)["comm_success"]

    def ok() -> None:
        gaps = [g for _, g in reply_gaps(trace(pair), since=since)]
        assert any(g < RAPI_TIMEOUT for g in gaps), f"no in-time reply since the fault ended: {gaps}"
        assert status(pair)["comm_success"] > before

    eventually(ok, "commands answered in time again")


def find_boot_reads_after_ab(pair: Pair, since: float) -> None:
    def boot_reads() -> None:
        entries = trace(pair)
        abs_ = frames(entries, direction=EVSE_TO_FW, command="AB", since=since, delivered=True)
        assert abs_, "no $AB reached the firmware"
        after = [e["command"] for e in frames(entries, direction=FW_TO_EVSE, since=abs_[-1]["t"])]
        it = iter(after)
        missing = [c for c in BOOT_READS if c not in it]  # subsequence, in order
        assert not missing, f"boot reads after $AB: {after}"

    eventually(boot_reads, "boot reads after $AB")
