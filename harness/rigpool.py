"""Ready rigs per size, handed to consecutive tests with a verified reset in between.

One pool per process (each xdist worker has its own). ``acquire(n)`` returns an idle rig of
size ``n`` after ``harness.reset.reset_and_verify`` on every pair, or starts a new one;
``release`` puts it back (or closes it: scope ``test``, a ``fresh`` lease). A pair whose
reset fails or does not verify is replaced (stopped, a new one started in its slot); a
firmware whose process died is restarted first. ``close()`` stops every rig, in parallel.
``stats`` counts and times all of it for the terminal summary.

Planning (``plan()``, then ``at(test)`` as each test starts): the pool knows which sizes the
collected tests ask for, in order. A pooled rig whose size no later test needs is stopped
when it is given back (fewer live units: less CPU, shorter peer lists). With prestart, rigs
are started in the background ahead of need: one per size for reuse, all at once, and one
spare for the next ``fresh`` test (one at a time, to keep the number of live units down). A
real build's ≈ 10 s EVSE-link wait then overlaps with other tests instead of adding up."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.bridge import SerialBridge
from harness.emulators.base import EmulatorHandle
from harness.errors import HarnessError, TeardownErrors
from harness.pair import Pair
from harness.reset import Baseline, capture, complete, reset_and_verify
from harness.rig import Rig
from harness.settings import Settings

SCOPES = ("test", "module", "session")
RESET_TIMEOUT = 8.0  # one 5 s sweep stall of a real build (firmware.md §2.3) + a few RAPI cycles
MAX_EVENTS = 200

RigFactory = Callable[[int, Path], Rig]


@dataclass
class Stats:
    """Counts and seconds; JSON-able so xdist workers can send them to the controller."""

    started: int = 0
    start_s: float = 0.0
    reused: int = 0
    reset: int = 0
    reset_s: float = 0.0
    replaced: int = 0
    replace_s: float = 0.0
    restarted: int = 0
    restart_s: float = 0.0
    link_waits: int = 0
    link_s: float = 0.0
    torn_down: int = 0
    teardown_s: float = 0.0
    events: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def merge(self, doc: dict[str, Any]) -> None:
        for key, value in doc.items():
            if key == "events":
                self.events.extend(value[: max(0, MAX_EVENTS - len(self.events))])
            elif key == "unsupported":
                self.unsupported = sorted(set(self.unsupported) | set(value))
            elif hasattr(self, key):
                setattr(self, key, getattr(self, key) + value)

    def event(self, text: str) -> None:
        if len(self.events) < MAX_EVENTS:
            self.events.append(text)

    def lines(self, scope: str) -> list[str]:
        head = (
            f"harness rigs (--rig-scope {scope}): {self.started} started ({self.start_s:.1f}s), "
            f"{self.reused} reused, {self.reset} reset ({self.reset_s:.1f}s), "
            f"{self.replaced} pairs replaced ({self.replace_s:.1f}s), "
            f"{self.restarted} firmware restarted ({self.restart_s:.1f}s), "
            f"{self.torn_down} torn down ({self.teardown_s:.1f}s)"
        )
        lines = [head]
        if self.link_waits:
            lines.append(f"harness rigs: {self.link_waits} deferred EVSE-link waits ({self.link_s:.1f}s)")
        if self.unsupported:
            lines.append(
                "harness reset: not supported by this firmware, skipped: " + ", ".join(self.unsupported)
            )
        lines.extend(f"harness: {e}" for e in self.events)
        return lines


@dataclass
class Pooled:
    """A rig the pool owns, with each pair's baseline (``None`` in scope ``test``)."""

    rig: Rig
    n: int
    module: str | None
    fresh: bool
    baselines: list[Baseline | None]
    linked: bool
    uses: int = 0


@dataclass
class Lease:
    """A rig handed to one test; ``notes`` say what was done to it first (replacements)."""

    pooled: Pooled
    reused: bool
    notes: list[str] = field(default_factory=list)

    @property
    def rig(self) -> Rig:
        return self.pooled.rig


class RigPool:
    def __init__(
        self,
        settings: Settings,
        *,
        scope: str,
        workdir: Callable[[int], Path],
        worker: str = "main",
        reset_timeout: float = RESET_TIMEOUT,
        factory: RigFactory | None = None,
    ) -> None:
        if scope not in SCOPES:
            raise ValueError(f"rig scope must be one of {SCOPES}, not {scope!r}")
        self.settings = settings
        self.scope = scope
        self.worker = worker
        self.reset_timeout = reset_timeout
        self._workdir = workdir
        self._factory = factory or (lambda n, wd: Rig(settings, n, workdir=wd, kind="pytest"))
        self.idle: list[Pooled] = []
        self.leased: list[Pooled] = []
        self.stats = Stats()
        self._closed = False
        self.warming: list[tuple[int, bool, Rig, Future[Pooled]]] = []  # size, fresh, rig, start
        self._starting: set[Rig] = set()
        self._lock = threading.Lock()
        self._bg: ThreadPoolExecutor | None = None
        self._remaining: Counter[tuple[int, bool]] = Counter()  # (size, fresh) → tests to come
        self._order: list[tuple[str, int, bool]] = []  # (test, size, fresh) in run order
        self._cursor = 0
        self._fresh_taken = -1  # order index of the last test that took a fresh rig
        self._unknown: list[int] = []  # order indices of tests whose sizes show only when run
        self._per_test: dict[str, Counter[tuple[int, bool]]] = {}
        self._planned = False
        self._prestart = False
        self.last_failed: Rig | None = None  # the rig whose start failed last (for its logs)

    # ---- prestart --------------------------------------------------------------------------

    def plan(self, demand: list[tuple[str, int, bool]], *, prestart: bool) -> None:
        """(test, size, fresh) of each test to run, in order (size 0: not known before the
        test runs); with ``prestart``, start what they need in the background now."""
        self._order = [(t, n, fresh or self.scope == "test") for t, n, fresh in demand]
        self._unknown = [i for i, (_, n, _) in enumerate(self._order) if n == 0]
        known = [(t, n, fresh) for t, n, fresh in self._order if n != 0]
        self._remaining = Counter((n, fresh) for _, n, fresh in known)
        for t, n, fresh in known:
            self._per_test.setdefault(t, Counter())[(n, fresh)] += 1
        self._planned = True
        self._prestart = prestart
        self._top_up()

    def at(self, test: str) -> None:
        """``test`` is about to run (its place in the plan moves the prestart window)."""
        for i in range(self._cursor, len(self._order)):
            if self._order[i][0] == test:
                self._cursor = i
                break
        self._top_up()

    def _top_up(self) -> None:
        """Prestart what is missing: a pooled rig for each size later tests reuse, and a
        spare for the next fresh test."""
        if not self._prestart or self._closed:
            return
        live = {p.n for p in self.idle + self.leased if not p.fresh}
        live |= {n for n, fresh, _, _ in self.warming if not fresh}
        for n in sorted({n for (n, fresh), left in self._remaining.items() if left > 0 and not fresh}):
            if n not in live:
                self._submit(n, fresh=False)
        if any(fresh for _, fresh, _, _ in self.warming):
            return
        start = max(self._cursor, self._fresh_taken + 1)
        upcoming = next((n for _, n, fresh in self._order[start:] if fresh and n), None)
        if upcoming is not None:
            self._submit(upcoming, fresh=True)

    def _submit(self, n: int, *, fresh: bool) -> None:
        if self._bg is None:
            self._bg = ThreadPoolExecutor(max_workers=8, thread_name_prefix="rigpool-prestart")
        rig = self._factory(n, self._workdir(n))
        self.warming.append((n, fresh, rig, self._bg.submit(self._start_detached, n, rig)))

    def _start_detached(self, n: int, rig: Rig) -> Pooled:
        """``rig`` started, with baselines, owned by nobody yet (closed here if it fails)."""
        t0 = time.monotonic()
        with self._lock:
            if self._closed:
                raise HarnessError("the rig pool closed before this prestart began")
            self._starting.add(rig)
        try:
            rig.start()
            pooled = Pooled(rig, n, None, False, self._capture_all(rig, link=True), linked=True)
        except BaseException:
            try:
                rig.close()
            finally:
                with self._lock:
                    self._starting.discard(rig)
                    self.stats.torn_down += 1
            raise
        finally:
            with self._lock:
                self.stats.started += 1
                self.stats.start_s += time.monotonic() - t0
        with self._lock:
            self._starting.discard(rig)
        return pooled

    def _take_warming(self, n: int, module: str | None, fresh: bool) -> Pooled | None:
        sized = [e for e in self.warming if e[0] == n]
        entry = next((e for e in sized if e[1] == fresh), sized[0] if sized else None)
        if entry is None:
            return None
        fut = entry[3]
        try:
            pooled = fut.result()  # its start error is this test's, as a start here would be
        except BaseException:
            if fut.done():  # else interrupted while waiting: close() stops it
                self.warming.remove(entry)
                self.last_failed = entry[2]
            raise
        self.warming.remove(entry)
        pooled.module, pooled.fresh = module, fresh
        self.leased.append(pooled)
        return pooled

    # ---- hand out --------------------------------------------------------------------------

    def acquire(
        self, n: int, *, test: str, module: str | None = None, fresh: bool = False, http_only: bool = False
    ) -> Lease:
        """A ready rig of ``n`` pairs, clean. ``fresh``: a brand-new one, closed on release;
        ``http_only``: a new rig may be handed over before its EVSE link is up."""
        if self._closed:
            raise HarnessError("the rig pool is closed (session ending)")
        if self.scope == "module":
            self._close_where(lambda p: p.module != module)
        fresh = fresh or self.scope == "test"
        key = (n, fresh)
        mine = self._per_test.get(test) if self._planned else None
        if mine is not None and mine[key] > 0:  # a lease the plan foresaw: one fewer to come
            mine[key] -= 1
            self._remaining[key] -= 1
        if fresh:
            self._fresh_taken = self._cursor
        try:
            return self._acquire(n, test, module, fresh, http_only)
        finally:
            self._top_up()

    def _acquire(self, n: int, test: str, module: str | None, fresh: bool, http_only: bool) -> Lease:
        if not fresh:
            pooled = next((p for p in self.idle if p.n == n), None)
            if pooled is not None:
                self.idle.remove(pooled)
                self.leased.append(pooled)
                try:
                    notes = self._prepare(pooled, test)
                except BaseException:
                    self._close(pooled)
                    raise
                if pooled in self.leased:
                    self.stats.reused += 1
                    pooled.uses += 1
                    return Lease(pooled, reused=True, notes=notes)
                # _prepare gave up on it (and closed it): start a new one below.
                self.stats.event(f"rig n{n} ({self.worker}) discarded before {test}: " + "; ".join(notes))
        warm = self._take_warming(n, module, fresh)
        if warm is not None:
            return Lease(warm, reused=False)
        return Lease(self._start(n, module, fresh, http_only), reused=False)

    def release(self, lease: Lease) -> None:
        """Back to the pool, or closed (scope ``test``, a fresh lease, a closed pool)."""
        pooled = lease.pooled
        if pooled not in self.leased:
            return
        self.leased.remove(pooled)
        unneeded = (
            self._planned
            and self._remaining[(pooled.n, False)] == 0
            and not any(i >= self._cursor for i in self._unknown)
        )
        if pooled.fresh or self.scope == "test" or self._closed or unneeded:
            self._close(pooled)
        else:
            self.idle.append(pooled)

    def take_failed(self) -> Rig | None:
        """The rig whose start failed last (its logs explain why), and forget it."""
        rig, self.last_failed = self.last_failed, None
        return rig

    def end_module(self) -> None:
        """Scope ``module``: the module's tests are done."""
        if self.scope == "module":
            self._close_where(lambda p: True)

    def close(self) -> None:
        """Stop every rig (idle, leased, still starting) in parallel; raises ``TeardownErrors``
        at the end."""
        with self._lock:
            self._closed = True
            for rig in self._starting:
                rig.abort()  # prestarts give up at their next poll and close their rig
        warming, self.warming = self.warming, []
        for _, _, _, fut in warming:
            fut.cancel()
        ready = []
        for _, _, _, fut in warming:
            if not fut.cancelled() and fut.exception() is None:
                ready.append(fut.result())
        if self._bg is not None:
            self._bg.shutdown(wait=True)
        self.idle.extend(ready)
        self._close_where(lambda p: True, leased_too=True)

    # ---- start -----------------------------------------------------------------------------

    def _start(self, n: int, module: str | None, fresh: bool, http_only: bool) -> Pooled:
        t0 = time.monotonic()
        rig = self._factory(n, self._workdir(n))
        pooled = Pooled(rig, n, module, fresh, [None] * n, linked=not http_only)
        self.leased.append(pooled)
        try:
            rig.start(wait_link=not http_only)
            if not fresh:
                pooled.baselines = self._capture_all(rig, link=not http_only)
        except BaseException:
            self.last_failed = rig
            self._close(pooled)
            raise
        finally:
            with self._lock:
                self.stats.started += 1
                self.stats.start_s += time.monotonic() - t0
        return pooled

    @staticmethod
    def _parallel(pairs: list[Pair], fn: Callable[[Pair], Any]) -> list[Any]:
        with ThreadPoolExecutor(max_workers=max(1, len(pairs))) as ex:
            return [f.result() for f in [ex.submit(fn, p) for p in pairs]]

    def _capture_all(self, rig: Rig, *, link: bool) -> list[Baseline | None]:
        return list(self._parallel(list(rig), lambda p: capture(p, link=link)))

    # ---- reset -----------------------------------------------------------------------------

    def _prepare(self, pooled: Pooled, test: str) -> list[str]:
        """Make a returning rig clean for ``test``; returns notes on what had to be replaced.
        On a failure that cannot be repaired, closes the rig and removes it from the pool."""
        rig = pooled.rig
        notes: list[str] = []
        label = f"rig n{pooled.n} ({self.worker})"
        if not pooled.linked:
            t0 = time.monotonic()
            try:
                rig.wait_evse_link()
            finally:
                self.stats.link_waits += 1
                self.stats.link_s += time.monotonic() - t0
            pooled.linked = True
            for pair, base in zip(rig, pooled.baselines, strict=True):
                if base is not None:
                    complete(pair, base)
        t0 = time.monotonic()
        to_replace: dict[int, str] = {}
        try:
            for pair in rig:
                # A stopped firmware takes its socat bridge with it; restarting the firmware
                # recycles the bridge. A dead emulator, or a dead bridge under a live firmware,
                # means a new pair.
                parts: list[tuple[str, EmulatorHandle | SerialBridge | None]] = [("emulator", pair.emulator)]
                if pair.firmware is not None and pair.firmware.alive() is None:
                    parts.append(("bridge", pair.bridge))
                dead = [
                    f"{part} died: {death}"
                    for part, handle in parts
                    if handle is not None and (death := handle.alive()) is not None
                ]
                if dead:
                    to_replace[pair.index] = "; ".join(dead)
            with self._timed("restart"):
                restarted = [
                    p
                    for p in rig
                    if p.index not in to_replace and p.firmware and p.firmware.alive() is not None
                ]
                for pair in restarted:
                    self.stats.event(f"{label}: restarted the dead firmware of {pair.name} before {test}")
                failures = self._parallel(restarted, _restart_firmware)
                self.stats.restarted += len(restarted)
                for pair, error in zip(restarted, failures, strict=True):
                    if error is not None:
                        to_replace[pair.index] = f"firmware restart failed: {error}"
            candidates = [p for p in rig if p.index not in to_replace]
            outcomes = self._parallel(
                candidates,
                lambda p: reset_and_verify(p, _need(pooled.baselines[p.index]), timeout=self.reset_timeout),
            )
            for pair, outcome in zip(candidates, outcomes, strict=True):
                self.stats.unsupported = sorted(set(self.stats.unsupported) | outcome.unsupported)
                if not outcome.ok:
                    to_replace[pair.index] = "; ".join(outcome.problems[:6])
        finally:
            self.stats.reset += 1
            self.stats.reset_s += time.monotonic() - t0
        if to_replace:
            notes = self._replace(pooled, to_replace, test, label)
        return notes

    def _replace(self, pooled: Pooled, which: dict[int, str], test: str, label: str) -> list[str]:
        rig = pooled.rig
        notes = []
        for index, why in sorted(which.items()):
            old = rig[index].name
            t0 = time.monotonic()
            try:
                pair = rig.replace_pair(index)
                pooled.baselines[index] = capture(pair)
            except Exception as exc:
                self.stats.event(f"{label}: replacing {old} before {test} failed ({exc}); rig discarded")
                self._close(pooled)
                return [f"{old}: {why}; replacement failed: {exc}"]
            finally:
                self.stats.replaced += 1
                self.stats.replace_s += time.monotonic() - t0
            note = f"{old} replaced by {pair.name}: {why}"
            notes.append(note)
            self.stats.event(f"{label}: before {test}: {note}")
        return notes

    @contextmanager
    def _timed(self, what: str) -> Iterator[None]:
        t0 = time.monotonic()
        try:
            yield
        finally:
            setattr(self.stats, f"{what}_s", getattr(self.stats, f"{what}_s") + time.monotonic() - t0)

    # ---- stop ------------------------------------------------------------------------------

    def _close(self, pooled: Pooled) -> None:
        for group in (self.idle, self.leased):
            if pooled in group:
                group.remove(pooled)
        self._close_all([pooled])

    def _close_where(self, pick: Callable[[Pooled], bool], *, leased_too: bool = False) -> None:
        chosen = [p for p in self.idle if pick(p)]
        if leased_too:
            chosen += [p for p in self.leased if pick(p)]
        for group in (self.idle, self.leased):
            group[:] = [p for p in group if p not in chosen]
        self._close_all(chosen)

    def _close_all(self, chosen: list[Pooled]) -> None:
        if not chosen:
            return
        t0 = time.monotonic()
        errors: list[BaseException] = []
        with ThreadPoolExecutor(max_workers=len(chosen)) as ex:
            for fut in [ex.submit(p.rig.close) for p in chosen]:
                if (exc := fut.exception()) is not None:
                    errors.extend(exc.errors if isinstance(exc, TeardownErrors) else [exc])
        with self._lock:
            self.stats.torn_down += len(chosen)
            self.stats.teardown_s += time.monotonic() - t0
        if errors:
            raise TeardownErrors(errors)


def _restart_firmware(pair: Pair) -> str | None:
    try:
        pair.stop_firmware()
        pair.start_firmware()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _need(baseline: Baseline | None) -> Baseline:
    if baseline is None:
        raise HarnessError("no baseline for this pair (a fresh rig is never reset)")
    return baseline
