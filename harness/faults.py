"""Fault injection: the frame-level fault plan of the serial link, and process faults.

Link faults (applied by ``harness.fault_bridge.FaultBridge``, the ``python`` bridge), per
complete RAPI frame (evse.md §1: ``$…\\r``), in this order:

- ``stall``: every frame towards the firmware is swallowed (the EVSE accepts commands and
  never answers); commands still reach the EVSE.
- ``drop=N``: the next N frames in ``direction`` are swallowed.
- ``corrupt=N``: the next N frames in ``direction`` get a wrong ``^CC`` checksum.
- ``delay_ms=D``: frames in ``direction`` are held D ms (order kept). Towards the firmware
  (the default) a delay over 500 ms turns every reply into a timeout (firmware.md §6.1).
- ``refuse``: the TCP side is closed and not reopened while the fault holds.

``FaultEngine.push(plan)`` applies a plan and returns a token; ``pop(token)`` undoes exactly
that plan (counts it did not use up, its delay, its stall, its refusal), so nested or
overlapping ``with bridge.fault(...)`` blocks restore the link they found.

Process faults (``kill_firmware``, ``firmware_stopped``, ``restart_emulator``,
``emulator_stopped``, ``reboot_emulator`` …) act on a started ``harness.pair.Pair``.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from harness.errors import HarnessError
from harness.trace import EVSE_TO_FW, FW_TO_EVSE, corrupt_checksum

if TYPE_CHECKING:
    from harness.pair import Pair

DIRECTIONS = (FW_TO_EVSE, EVSE_TO_FW)
COUNTERS = ("dropped", "corrupted", "delayed", "stalled", "disconnected")


class FaultError(HarnessError):
    """A fault could not be applied or undone."""


@dataclass(frozen=True)
class FaultPlan:
    """One ``fault(...)`` block: what to do to the link while it holds."""

    delay_ms: float = 0.0
    drop: int = 0
    corrupt: int = 0
    stall: bool = False
    refuse: bool = False
    direction: str = EVSE_TO_FW

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, not {self.direction!r}")
        if self.delay_ms < 0 or self.drop < 0 or self.corrupt < 0:
            raise ValueError(f"delay_ms, drop and corrupt must be >= 0: {self}")

    def describe(self) -> str:
        parts = []
        if self.delay_ms:
            parts.append(f"delay {self.delay_ms:g} ms")
        if self.drop:
            parts.append(f"drop {self.drop}")
        if self.corrupt:
            parts.append(f"corrupt {self.corrupt}")
        if self.delay_ms or self.drop or self.corrupt:
            parts.append(self.direction)
        if self.stall:
            parts.append("stall (evse->fw swallowed)")
        if self.refuse:
            parts.append("refuse TCP")
        return ", ".join(parts) or "no fault"


@dataclass
class Decision:
    """What to do with one frame: deliver ``frame`` after ``delay`` s, or swallow it."""

    frame: bytes
    deliver: bool = True
    delay: float = 0.0
    fault: str | None = None


@dataclass
class _Applied:
    plan: FaultPlan
    drop_left: int
    corrupt_left: int
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))


class FaultEngine:
    """Thread-safe state of the link faults; ``decide()`` is called for every frame."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._active: dict[int, _Applied] = {}
        self._next = 1
        self.totals = dict.fromkeys(COUNTERS, 0)

    # ---- plans ---------------------------------------------------------------------------

    def push(self, plan: FaultPlan) -> int:
        with self._lock:
            token = self._next
            self._next += 1
            self._active[token] = _Applied(plan, plan.drop, plan.corrupt)
            self._lock.notify_all()
            return token

    def pop(self, token: int) -> dict[str, int]:
        """Undo one plan; returns what it did (counts)."""
        with self._lock:
            applied = self._active.pop(token, None)
            self._lock.notify_all()
            return dict(applied.counts) if applied else dict.fromkeys(COUNTERS, 0)

    def counts(self, token: int) -> dict[str, int]:
        with self._lock:
            applied = self._active.get(token)
            return dict(applied.counts) if applied else dict.fromkeys(COUNTERS, 0)

    def wait_counts(self, token: int, timeout: float, **want: int) -> dict[str, int]:
        """Block until the plan has done at least ``want`` (e.g. ``dropped=2``)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                applied = self._active.get(token)
                got = dict(applied.counts) if applied else dict.fromkeys(COUNTERS, 0)
                if all(got.get(k, 0) >= v for k, v in want.items()):
                    return got
                remaining = deadline - time.monotonic()
                if remaining <= 0 or applied is None:
                    raise FaultError(
                        f"fault ({applied.plan.describe() if applied else 'gone'}) did {got}, "
                        f"wanted {want} within {timeout:.1f}s: is traffic flowing on the link?"
                    )
                self._lock.wait(remaining)

    def clear(self) -> None:
        with self._lock:
            self._active.clear()
            self._lock.notify_all()

    # ---- state ---------------------------------------------------------------------------

    @property
    def refusing(self) -> bool:
        with self._lock:
            return any(a.plan.refuse for a in self._active.values())

    @property
    def active(self) -> list[FaultPlan]:
        with self._lock:
            return [a.plan for a in self._active.values()]

    def _count(self, applied: _Applied | None, what: str) -> None:
        self.totals[what] += 1
        if applied is not None:
            applied.counts[what] += 1
        self._lock.notify_all()

    def note_disconnected(self) -> None:
        """A frame from the firmware was lost because the TCP side was down."""
        with self._lock:
            refusing = next((a for a in self._active.values() if a.plan.refuse), None)
            self._count(refusing, "disconnected")

    def decide(self, direction: str, frame: bytes) -> Decision:
        """Apply the active plans to one frame (stall, drop, corrupt, delay — in that order)."""
        with self._lock:
            active = list(self._active.values())
            if direction == EVSE_TO_FW:
                staller = next((a for a in active if a.plan.stall), None)
                if staller is not None:
                    self._count(staller, "stalled")
                    return Decision(frame, deliver=False, fault="stalled")
            dropper = next((a for a in active if a.plan.direction == direction and a.drop_left > 0), None)
            if dropper is not None:
                dropper.drop_left -= 1
                self._count(dropper, "dropped")
                return Decision(frame, deliver=False, fault="dropped")
            decision = Decision(frame)
            corrupter = next(
                (a for a in active if a.plan.direction == direction and a.corrupt_left > 0), None
            )
            if corrupter is not None:
                corrupter.corrupt_left -= 1
                decision.frame = corrupt_checksum(frame)
                decision.fault = "corrupted"
                self._count(corrupter, "corrupted")
            delayers = [a for a in active if a.plan.direction == direction and a.plan.delay_ms > 0]
            if delayers:
                longest = max(delayers, key=lambda a: a.plan.delay_ms)
                decision.delay = longest.plan.delay_ms / 1000.0
                decision.fault = decision.fault or "delayed"
                self._count(longest, "delayed")
            return decision


class FaultHandle:
    """What ``with bridge.fault(...) as f`` gives: the plan and what it did so far."""

    def __init__(
        self, engine: FaultEngine, token: int, plan: FaultPlan, settle: Callable[[], None] | None = None
    ) -> None:
        self._engine = engine
        self._settle = settle
        self.token = token
        self.plan = plan
        self.final: dict[str, int] | None = None

    @property
    def counts(self) -> dict[str, int]:
        return self.final if self.final is not None else self._engine.counts(self.token)

    def wait(self, timeout: float = 10.0, **want: int) -> dict[str, int]:
        """Wait until the fault has hit enough frames, e.g. ``f.wait(dropped=2)``. On return
        the trace has those frames, except a delayed one, traced when its delay is over."""
        counts = self._engine.wait_counts(self.token, timeout, **want)
        if self._settle is not None:
            self._settle()
        return counts


# ---- process faults ----------------------------------------------------------------------


def kill_process(proc: Any, what: str, timeout: float = 5.0) -> None:
    """SIGKILL a ``ManagedProcess``'s group (a crash: no clean shutdown) and wait until it is
    gone and reaped (its ``on_exit`` runs, so the state file forgets it)."""
    if proc is None or not proc.signal_group(signal.SIGKILL):
        raise FaultError(f"{what} is not running: nothing to kill")
    try:
        proc.wait(timeout)
    except Exception as exc:
        raise FaultError(f"{what} did not exit within {timeout:.1f}s after SIGKILL: {exc}") from exc
    proc.stop()  # already exited: reaps it and runs its on_exit


@contextlib.contextmanager
def process_stopped(stop: Callable[[], None], start: Callable[[], None]) -> Iterator[None]:
    """``stop()``, run the block, and ``start()`` again, also when the block raises."""
    stop()
    try:
        yield
    finally:
        start()


def kill_firmware(pair: Pair, timeout: float = 5.0) -> None:
    """SIGKILL the pair's firmware and wait until it is gone; bridge and emulator stay up."""
    fw = pair.firmware
    kill_process(fw.proc if fw is not None else None, f"[{pair.name}] firmware", timeout)


@contextlib.contextmanager
def firmware_stopped(pair: Pair, *, kill: bool = False) -> Iterator[Pair]:
    """The firmware is down (SIGKILL with ``kill=True``, else SIGTERM) inside the block and
    started again, fully ready (HTTP and EVSE link), after it (also on an exception)."""
    stop = (lambda: kill_firmware(pair)) if kill else pair.stop_firmware
    with process_stopped(stop, pair.start_firmware):
        yield pair


def restart_firmware(pair: Pair, *, kill: bool = False) -> Pair:
    """Kill (or stop) and start again in the same state dir and port; waits until ready."""
    with firmware_stopped(pair, kill=kill):
        pass
    return pair


def _process_emulator(emulator: Any) -> Any:
    if emulator is None or getattr(emulator, "proc", None) is None:
        raise FaultError(
            f"emulator stop/restart needs the process or docker backend (got "
            f"{emulator.describe() if emulator is not None else 'none'})"
        )
    return emulator


def _container_emulator(emulator: Any) -> Any | None:
    """The Docker handle (it stops and replaces containers itself), else None."""
    return emulator if emulator is not None and hasattr(emulator, "resume") else None


def stop_emulator(emulator: Any, *, kill: bool = False, timeout: float = 5.0) -> None:
    """Stop (SIGTERM) or kill (SIGKILL) the emulator; bridge and firmware stay up."""
    guard = getattr(emulator, "stop_guard", None)
    if guard is not None:
        guard()
    container = _container_emulator(emulator)
    if container is not None:
        container.halt(kill=kill, timeout=timeout)
        return
    handle = _process_emulator(emulator)
    if kill:
        kill_process(handle.proc, f"[{handle.spec.instance}] emulator", timeout)
    else:
        handle.proc.stop(timeout)


def _with_port(argv: list[str], flag: str, port: int) -> list[str]:
    out = list(argv)
    if flag in out:
        out[out.index(flag) + 1] = str(port)
    else:
        out += [flag, str(port)]
    return out


def start_emulator(emulator: Any, timeout: float | None = None) -> None:
    """Start a stopped process emulator again on the same ports, so the bridge reconnects
    by itself and ``pair.emulator_url`` stays valid; returns once its control API answers."""
    from harness.emulators.process import _api_status_ok, find_ready_line
    from harness.waiting import wait_until

    container = _container_emulator(emulator)
    if container is not None:
        container.resume(timeout)
        return
    handle = _process_emulator(emulator)
    proc = handle.proc
    name = handle.spec.instance
    if proc.running():
        raise FaultError(f"[{name}] emulator is already running (pid {proc.pid})")
    web, rapi = handle.web_port, handle.rapi_port
    # Ours printed a ready line (it was started on port 0): pin the ports it got.
    ours = find_ready_line(proc.log_since_start()) is not None
    if ours:
        proc.argv = _with_port(_with_port(proc.argv, "--serial-tcp-port", rapi), "--web-port", web)
    limit = timeout if timeout is not None else handle.spec.startup_timeout
    proc.start()
    if ours:
        ready = wait_until(
            lambda _r: find_ready_line(proc.log_since_start()),
            instance=name,
            what="restarted emulator ready line",
            timeout=limit,
            alive=proc.alive,
            log_tail=proc.log_tail,
        )
        if (int(ready["web_port"]), int(ready["rapi_port"])) != (web, rapi):
            raise FaultError(f"[{name}] emulator came back on other ports: {ready}")
    wait_until(
        lambda remaining: _api_status_ok(handle.web_url, remaining),
        instance=name,
        what=f"restarted emulator GET {handle.web_url}/api/status",
        timeout=limit,
        alive=proc.alive,
        log_tail=proc.log_tail,
    )


@contextlib.contextmanager
def emulator_stopped(emulator: Any, *, kill: bool = False) -> Iterator[Any]:
    """The EVSE controller is gone inside the block (the firmware's commands time out) and
    back on the same ports after it; a fresh controller sends ``$AB`` (evse.md §1)."""
    with process_stopped(lambda: stop_emulator(emulator, kill=kill), lambda: start_emulator(emulator)):
        yield emulator


def restart_emulator(emulator: Any, *, kill: bool = False) -> None:
    with emulator_stopped(emulator, kill=kill):
        pass


def reboot_emulator(emulator: Any, timeout: float = 5.0) -> None:
    """Controller reboot through the control API: ``$AB`` to the firmware (evse.md §6),
    which re-runs its boot reads (firmware.md §6.1, §6.2). Any backend."""
    from harness.http import Api

    api = Api(emulator.web_url, timeout=timeout)
    try:
        resp = api.post("/api/evse/reset", json={})
    finally:
        api.close()
    if resp.status_code != 200:
        raise FaultError(f"POST {emulator.web_url}/api/evse/reset: HTTP {resp.status_code} {resp.text[:200]}")
