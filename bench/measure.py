"""The measurements: one rig's bring-up, convergence, footprint and teardown; the suite; baselines.

Stage split: ``Pair.timings`` gives cumulative seconds since the pair's start at "emulator"
and "bridge" and "ready"; the boundary between the firmware's HTTP stage and its EVSE-link stage
is taken from the rig's progress callback (the pair says ``firmware HTTP up`` the moment
``wait_http`` returns), timestamped on arrival. Teardown per part: each part's ``stop`` is
wrapped on the instance before ``Rig.close()`` runs, so the rig's own teardown is what is timed.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.procfs import Usage, group_usage, self_cpu_s

STAGES = ("emulator", "bridge", "firmware", "evse_link")
PARTS = ("firmware", "bridge", "emulator")
HTTP_UP = "firmware HTTP up"
EMULATOR_UP = "emulator ready"


@dataclass
class RigSample:
    """One repetition on one rig size (all times in seconds)."""

    n: int
    backend: str
    ready_s: float | None = None
    teardown_s: float | None = None
    converge_s: float | None = None
    converge_post_s: float | None = None
    rig_overhead_s: float | None = None  # time to ready minus the slowest pair's own bring-up
    harness_cpu_s: float | None = None  # CPU of this process (all threads) while starting
    stages: list[dict[str, float]] = field(default_factory=list)  # one per pair
    teardown_parts: list[dict[str, float]] = field(default_factory=list)  # one per pair
    usage: list[dict[str, dict[str, float]]] = field(default_factory=list)  # per pair, per part
    error: str | None = None
    logs: str | None = None  # the pairs' logs, kept when this repetition went wrong

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class ProgressClock:
    """A rig progress callback that keeps every message with its arrival time."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.events: list[tuple[float, str]] = []
        self._lock = threading.Lock()

    def __call__(self, text: str) -> None:
        stamp = self._clock()
        with self._lock:
            self.events.append((stamp, text))

    def first(self, name: str, marker: str) -> float | None:
        """When pair ``name`` first said something starting with ``marker``."""
        prefix = f"{name}: {marker}"
        with self._lock:
            return next((t for t, text in self.events if text.startswith(prefix)), None)


READY_LINE = '"event": "ready"'
SERVER_STARTED = "Server started"


class LogWatcher:
    """Notes when each pair's own log first shows it is up, independently of the harness's
    polling: the emulator's ready line and the firmware's ``Server started`` banner. The gap
    to the harness's own stamps is its detection lag (its poll backoff)."""

    def __init__(
        self, rig: Any, *, interval: float = 0.02, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rig = rig
        self._interval = interval
        self._clock = clock
        self._stop = threading.Event()
        self.seen: dict[tuple[str, str], float] = {}
        self._thread = threading.Thread(target=self._run, name="bench-log-watcher", daemon=True)

    def start(self) -> LogWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def scan(self) -> bool:
        """One look at every log; True once everything was seen."""
        pairs = list(getattr(self._rig, "pairs", []))
        pending = 0
        for pair in pairs:
            for what, name, needle in (
                ("emulator", "emulator.log", READY_LINE),
                ("firmware", "firmware.log", SERVER_STARTED),
            ):
                key = (pair.name, what)
                if key in self.seen:
                    continue
                try:
                    text = (Path(pair.run_dir) / name).read_text(errors="replace")
                except OSError:
                    text = ""
                if needle in text:
                    self.seen[key] = self._clock()
                else:
                    pending += 1
        return bool(pairs) and pending == 0

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.scan():
                return
            self._stop.wait(self._interval)


def detection_lags(
    timings: Mapping[str, float],
    emulator_said: float | None,
    http_said: float | None,
    emulator_seen: float | None,
    firmware_seen: float | None,
) -> dict[str, float]:
    """How long after a part's own log said "up" the harness noticed (seconds; can be a few
    ms negative when the harness polled between the log line and our next look)."""
    out: dict[str, float] = {}
    emulator = timings.get("emulator")
    if emulator is None or emulator_said is None:
        return out
    start = emulator_said - emulator
    if emulator_seen is not None:
        out["lag_emulator"] = emulator - (emulator_seen - start)
    if http_said is not None and firmware_seen is not None:
        out["lag_firmware_http"] = http_said - firmware_seen
    return out


def stage_split(
    timings: Mapping[str, float], emulator_said: float | None, http_said: float | None
) -> dict[str, float]:
    """Per-stage seconds of one pair from its cumulative ``timings`` and two message stamps.

    The pair's start instant is recovered as (stamp of "emulator ready") minus timings["emulator"]
    (the pair records the timing and says the message back to back). Without the HTTP stamp
    the firmware stage holds both firmware stages and ``evse_link`` is absent."""
    out: dict[str, float] = {}
    emulator = timings.get("emulator")
    bridge = timings.get("bridge")
    ready = timings.get("ready")
    if emulator is None or bridge is None or ready is None:
        return out
    out["emulator"] = emulator
    out["bridge"] = bridge - emulator
    http: float | None = None
    if emulator_said is not None and http_said is not None:
        http = http_said - (emulator_said - emulator)
        if not bridge <= http <= ready:  # clock noise or a retried port: fall back
            http = None
    if http is None:
        out["firmware"] = ready - bridge
    else:
        out["firmware"] = http - bridge
        out["evse_link"] = ready - http
    out["pair_ready"] = ready
    return out


def _wrap_stop(part: object, label: str, sink: dict[str, float]) -> None:
    """Replace ``part.stop`` on the instance by a timed call of the original."""
    original = getattr(part, "stop", None)
    if original is None:
        return

    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.monotonic()
        try:
            return original(*args, **kwargs)
        finally:
            sink[label] = time.monotonic() - t0

    try:
        setattr(part, "stop", timed)  # noqa: B010 - an instance attribute shadows the method
    except AttributeError:
        return


def pair_usage(pids: Mapping[str, int | None]) -> dict[str, dict[str, float]]:
    """Memory (MB) and CPU (s) of each part's process group, and their total."""
    groups = {label: pid for label, pid in pids.items() if isinstance(pid, int)}
    usage = group_usage(sorted(set(groups.values())))
    out: dict[str, dict[str, float]] = {}
    total = Usage()
    for label, pid in groups.items():
        u = usage.get(pid, Usage())
        total = total + u
        out[label] = _usage_json(u)
    out["total"] = _usage_json(total)
    return out


def _usage_json(u: Usage) -> dict[str, float]:
    return {"rss_mb": u.rss_kb / 1024, "pss_mb": u.pss_kb / 1024, "cpu_s": u.cpu_s, "processes": u.processes}


# ---- convergence --------------------------------------------------------------------------


def peers_converged(peers: Any, others: set[str]) -> bool:
    """Does one unit's ``GET /loadsharing/peers`` list every id in ``others`` as online?"""
    if not isinstance(peers, list):
        return False
    online = {str(p.get("id")) for p in peers if isinstance(p, dict) and p.get("online") is True}
    return others <= online


def measure_convergence(
    rig: Any, *, poll: float = 0.05, timeout: float = 30.0, stop: threading.Event | None = None
) -> tuple[float, float]:
    """POST /loadsharing/discover on every unit, then poll every unit's peers every ``poll`` s
    until all list all others online in one round. Returns (seconds to converge, seconds the
    POSTs took); raises ``TimeoutError`` naming the units still short."""
    pairs = list(rig)
    ids = [str(p.long_id) for p in pairs]
    t0 = time.monotonic()
    for p in pairs:
        resp = p.api.post("/loadsharing/discover", timeout=5.0)
        if resp.status_code >= 300:
            raise RuntimeError(f"{p.name}: POST /loadsharing/discover answered HTTP {resp.status_code}")
    posted = time.monotonic() - t0
    deadline = t0 + timeout
    while True:
        round_start = time.monotonic()
        short: list[str] = []
        for p, own in zip(pairs, ids, strict=True):
            try:
                resp = p.api.get("/loadsharing/peers", timeout=2.0)
                body = resp.json() if resp.status_code == 200 else None
            except Exception as exc:
                body = None
                short.append(f"{p.name} ({type(exc).__name__})")
                continue
            if not peers_converged(body, set(ids) - {own}):
                short.append(p.name)
        now = time.monotonic()
        if not short:
            return now - t0, posted
        if now >= deadline:
            raise TimeoutError(f"no convergence after {now - t0:.1f}s; still short: {', '.join(short)}")
        if stop is not None and stop.is_set():
            raise KeyboardInterrupt
        time.sleep(max(0.0, round_start + poll - time.monotonic()))


# ---- one rig ------------------------------------------------------------------------------


def _start_interruptibly(rig: Any) -> None:
    """``rig.start()`` in a thread, so Ctrl-C can ``abort()`` pairs still waiting.

    Waits on an Event, not ``Thread.join``: on 3.11 a join interrupted by Ctrl-C marks the
    still-running thread as stopped, and the next join returns at once."""
    box: list[BaseException] = []
    done = threading.Event()

    def run() -> None:
        try:
            rig.start()
        except BaseException as exc:  # handed back to the caller
            box.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, name="bench-rig-start", daemon=True).start()
    try:
        while not done.wait(0.2):
            pass
    except KeyboardInterrupt:
        rig.abort()
        done.wait()
        raise
    if box:
        raise box[0]


@contextmanager
def _closing(rig: Any) -> Iterator[None]:
    """Always close the rig: on success, on errors, on Ctrl-C."""
    try:
        yield
    finally:
        try:
            rig.close()
        except Exception as exc:
            print(f"  teardown error: {exc}", file=sys.stderr)


def measure_rig(
    settings: Any,
    n: int,
    *,
    converge: bool = False,
    poll: float = 0.05,
    converge_timeout: float = 30.0,
    memory: bool = True,
    logs_dir: Path | None = None,
    watch_logs: bool = True,
) -> RigSample:
    """Start a rig of ``n`` pairs, take its footprint, optionally converge, tear it down.

    With ``logs_dir`` the pairs' logs and firmware state go to a fresh directory under it,
    kept (and named in ``sample.logs``) only when the repetition went wrong."""
    from harness.rig import Rig

    sample = RigSample(n=n, backend=str(settings.emulator_backend))
    clock = ProgressClock()
    workdir: Path | None = None
    if logs_dir is not None:
        logs_dir.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix=f"{sample.backend}-n{n}-", dir=logs_dir))
    rig = Rig(settings, n, progress=clock, kind="bench", workdir=workdir)
    try:
        _measure(
            rig,
            sample,
            clock,
            converge=converge,
            poll=poll,
            converge_timeout=converge_timeout,
            memory=memory,
            watch_logs=watch_logs,
        )
    finally:
        if workdir is not None:
            if sample.error is None:
                shutil.rmtree(workdir, ignore_errors=True)
            else:
                sample.logs = str(workdir)
    return sample


def _deaths(rig: Any) -> list[str]:
    """Parts of the rig's pairs that are no longer running, with how they ended."""
    out: list[str] = []
    for pair in rig:
        for label in PARTS:
            part = getattr(pair, label, None)
            death = part.alive() if part is not None else None
            if death is not None:
                out.append(f"{pair.name} {label}: {death}")
    return out


def _measure(
    rig: Any,
    sample: RigSample,
    clock: ProgressClock,
    *,
    converge: bool,
    poll: float,
    converge_timeout: float,
    memory: bool,
    watch_logs: bool,
) -> None:
    n = sample.n
    with _closing(rig):
        cpu0 = self_cpu_s()
        watcher = LogWatcher(rig).start() if watch_logs else None
        t0 = time.monotonic()
        try:
            _start_interruptibly(rig)
            ready_at, cpu1 = time.monotonic(), self_cpu_s()  # before the watcher's join
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            sample.error = f"start: {type(exc).__name__}: {exc}"[:4000]
            return
        finally:
            if watcher is not None:
                watcher.stop()
        sample.ready_s = ready_at - t0
        sample.harness_cpu_s = cpu1 - cpu0
        slowest = 0.0
        for pair in rig:
            emulator_said = clock.first(pair.name, EMULATOR_UP)
            http_said = clock.first(pair.name, HTTP_UP)
            split = stage_split(pair.timings, emulator_said, http_said)
            if watcher is not None:
                split.update(
                    detection_lags(
                        pair.timings,
                        emulator_said,
                        http_said,
                        watcher.seen.get((pair.name, "emulator")),
                        watcher.seen.get((pair.name, "firmware")),
                    )
                )
            sample.stages.append(split)
            slowest = max(slowest, split.get("pair_ready", 0.0))
        sample.rig_overhead_s = sample.ready_s - slowest
        if memory:
            sample.usage = [pair_usage(pair.pids()) for pair in rig]
        if converge and n > 1:
            try:
                sample.converge_s, sample.converge_post_s = measure_convergence(
                    rig, poll=poll, timeout=converge_timeout
                )
            except (TimeoutError, RuntimeError, OSError) as exc:
                sample.error = f"convergence: {exc}"[:4000]
        if deaths := _deaths(rig):  # something ended a part while the rig was up
            died = "exited while the rig was up: " + "; ".join(deaths)
            sample.error = f"{sample.error}; {died}" if sample.error else died
        sinks: list[dict[str, float]] = []
        for pair in rig:
            sink: dict[str, float] = {}
            sinks.append(sink)
            for label in PARTS:
                part = getattr(pair, label, None)
                if part is not None:
                    _wrap_stop(part, label, sink)
        t1 = time.monotonic()
        try:
            rig.close()
        except Exception as exc:
            sample.error = f"teardown: {type(exc).__name__}: {exc}"[:4000]
        sample.teardown_s = time.monotonic() - t1
        sample.teardown_parts = sinks


def safe_measure_rig(settings: Any, n: int, **kwargs: Any) -> RigSample:
    """``measure_rig`` that turns any non-interrupt failure into a sample with an error."""
    try:
        return measure_rig(settings, n, **kwargs)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        return RigSample(
            n=n,
            backend=str(getattr(settings, "emulator_backend", "?")),
            error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"[:4000],
        )


# ---- the integration suite ----------------------------------------------------------------

_COUNT = re.compile(
    r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|deselected|warnings?|tests? collected)\b"
)
_DURATION = re.compile(r"^\s*([\d.]+)s (setup|call|teardown)\s+(\S+)")


def parse_pytest_summary(text: str) -> dict[str, int]:
    """Counts from pytest's last summary line (``3 passed, 1 failed, 2 skipped in 12.3s``)."""
    for line in reversed(text.strip().splitlines()):
        if " in " in line and _COUNT.search(line):
            counts: dict[str, int] = {}
            for num, word in _COUNT.findall(line):
                key = {"error": "errors", "warning": "warnings"}.get(word, word)
                key = "collected" if key.endswith("collected") else key
                counts[key] = counts.get(key, 0) + int(num)
            return counts
    return {}


def parse_durations(text: str, limit: int | None = 8) -> list[dict[str, Any]]:
    """The ``--durations`` lines, slowest first (pytest's order); ``limit=None``: all."""
    rows: list[dict[str, Any]] = []
    for line in text.splitlines():
        m = _DURATION.match(line)
        if m:
            rows.append({"seconds": float(m.group(1)), "phase": m.group(2), "test": m.group(3)})
    return rows if limit is None else rows[:limit]


def run_suite(
    instances: int,
    workers: int,
    *,
    cwd: Path,
    log_dir: Path,
    timeout: float = 1800.0,
    collect_only: bool = False,
    rep: int = 1,
) -> dict[str, Any]:
    """Run the integration suite once for one rig size; wall time, counts, slowest phases.

    ``collect_only``: pytest's start-up and collection alone, the fixed cost of every run."""
    argv = [
        sys.executable, "-m", "pytest", "tests/integration",
        "--instances", str(instances), "-q", "-p", "no:cacheprovider", "--durations=0",
    ]  # fmt: skip
    if workers > 1:
        argv += ["-n", str(workers)]
    if collect_only:
        argv.append("--collect-only")
    log_dir.mkdir(parents=True, exist_ok=True)
    suffix = "-collect" if collect_only else f"-r{rep}"
    log_path = log_dir / f"suite-n{instances}-w{workers}{suffix}.log"
    result: dict[str, Any] = {
        "rep": rep,
        "instances": instances,
        "workers": workers,
        "argv": argv[1:],
        "log": str(log_path),
    }
    if not (cwd / "tests" / "integration").is_dir():
        result["error"] = "tests/integration does not exist"
        return result
    t0 = time.monotonic()
    with log_path.open("w") as log:
        proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            result["returncode"] = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            result["error"] = f"timed out after {timeout:.0f}s"
            _interrupt(proc)
        except KeyboardInterrupt:
            _interrupt(proc)  # pytest tears its rigs down on SIGINT
            raise
    result["wall_s"] = time.monotonic() - t0
    text = log_path.read_text(errors="replace")
    result["counts"] = parse_pytest_summary(text)
    phases = parse_durations(text, limit=None)
    result["slowest"] = phases[:8]
    result["phases_total_s"] = float(sum(p["seconds"] for p in phases))
    result["phases_by_kind_s"] = {
        kind: float(sum(p["seconds"] for p in phases if p["phase"] == kind))
        for kind in ("setup", "call", "teardown")
    }
    result["failed_tests"] = failed_tests(text)
    if result.get("returncode") not in (0, None) and "error" not in result:
        last = text.strip().splitlines()[-1:] or [""]
        result["error"] = f"pytest exited {result['returncode']}: {last[0]}"[:2000]
    return result


def _interrupt(proc: subprocess.Popen[bytes], grace: float = 20.0) -> None:
    """SIGINT (pytest then tears its rigs down), SIGKILL after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def failed_tests(text: str) -> list[str]:
    """The ``FAILED``/``ERROR`` lines of pytest's short summary (``-ra``)."""
    return [line.strip() for line in text.splitlines() if line.startswith(("FAILED ", "ERROR "))]


# ---- baselines ----------------------------------------------------------------------------


def time_command(argv: list[str], reps: int = 3, timeout: float = 60.0) -> float | None:
    """Fastest of ``reps`` runs of a command (seconds), None when it fails."""
    best: float | None = None
    for _ in range(reps):
        t0 = time.monotonic()
        try:
            proc = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        if proc.returncode != 0:
            return None
        elapsed = time.monotonic() - t0
        best = elapsed if best is None else min(best, elapsed)
    return best


def _noop() -> None:
    return None


def spawn_cost(*, preexec: bool, reps: int = 15) -> float | None:
    """Median seconds for ``Popen`` of ``true`` to return in this process: with a
    ``preexec_fn`` (what the harness needs for PDEATHSIG) CPython must fork() the whole
    process, without one it can vfork(). Every spawn of a rig goes through this path."""
    exe = shutil.which("true")
    if exe is None:
        return None
    times: list[float] = []
    for _ in range(reps):
        t0 = time.monotonic()
        proc = subprocess.Popen(  # measuring exactly this path (fork with preexec_fn)
            [exe],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_noop if preexec else None,
        )
        times.append(time.monotonic() - t0)
        proc.wait()
    times.sort()
    return times[len(times) // 2]


def baselines(settings: Any) -> dict[str, float | None]:
    """What a bare process start costs here: the floor under every stage."""
    return {
        "python_startup_s": time_command([sys.executable, "-c", "pass"]),
        "firmware_help_s": time_command([*settings.firmware_argv, "--help"]),
        "emulator_help_s": time_command([*settings.emulator_argv, "--help"]),
        "spawn_fork_preexec_s": spawn_cost(preexec=True),
        "spawn_vfork_s": spawn_cost(preexec=False),
        "firmware_imports_s": time_command(
            [sys.executable, "-c", "import aiohttp, zeroconf, zeroconf.asyncio, openevse_sim.app"]
        )
        if settings.is_stand_in
        else None,
    }


def docker_ready(image: str, timeout: float = 15.0) -> str | None:
    """None when ``docker info`` answers and ``image`` exists, else why not."""
    for argv in (["docker", "info"], ["docker", "image", "inspect", image]):
        try:
            proc = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{' '.join(argv)}: {exc}"
        if proc.returncode != 0:
            return f"`{' '.join(argv)}` exited {proc.returncode}"
    return None
