"""What the RAPI serial link costs: one command's round trip through each bridge, on real parts.

One emulator process (ours, as the process backend starts it), then, in turn, a client
that talks to it as the firmware would (``bench/link_client.py``, its own process):

- ``tcp``: straight to the emulator's RAPI port, no bridge: the floor;
- ``socat``: through ``SocatBridge``'s PTY (the default bridge), its ``-x`` dump followed by
  the trace converter as in a pair;
- ``python``: through ``FaultBridge``'s PTY (``HARNESS_BRIDGE=python``), no fault active,
  tracing as in a pair;
- ``python_delay``: the same with ``fault(delay_ms=50)``: every sample must be at least
  50 ms, and p50 minus the python p50 should come out near 50 ms. That the delay shows
  up where it should is the check that these figures time the wire, not something beside it.

The paths take turns (``rounds``; each round starts the bridge afresh), so a load spike from
elsewhere on the machine hits every path alike. Nothing here asserts a time.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from bench.link_client import frame
from bench.stats import percentile

CLIENT = Path(__file__).with_name("link_client.py")
COMMAND = "$GS"  # a cheap read: state, elapsed, pilot, flags (evse.md §3)
DELAY_MS = 50.0
WARMUP = 20  # the first round trips pay for connecting (socat connects on first open) and $AB
ROUNDS = 5
SOCAT_MISSING = "socat is not installed (fix: apt-get install socat)"


@dataclass(frozen=True)
class LinkPath:
    key: str
    label: str
    bridge: str | None  # None: direct TCP
    delay_ms: float = 0.0


PATHS: tuple[LinkPath, ...] = (
    LinkPath("tcp", "direct TCP (no bridge)", None),
    LinkPath("socat", "socat bridge (PTY)", "socat"),
    LinkPath("python", "python bridge (PTY)", "python"),
    LinkPath("python_delay", f"python bridge, delay_ms={DELAY_MS:g}", "python", DELAY_MS),
)


class LatencySummary(TypedDict):
    n: int
    p50: float
    p95: float
    p99: float
    min: float
    max: float
    mean: float


def latency_summary(values: Sequence[float]) -> LatencySummary | None:
    """p50/p95/p99/min/max/mean; None when nothing was measured.

    p99 and max matter here: a relay thread that misses a wake-up shows in the tail only."""
    clean = [float(v) for v in values if math.isfinite(v)]
    if not clean:
        return None
    return LatencySummary(
        n=len(clean),
        p50=percentile(clean, 50),
        p95=percentile(clean, 95),
        p99=percentile(clean, 99),
        min=min(clean),
        max=max(clean),
        mean=sum(clean) / len(clean),
    )


def split_reps(reps: int, rounds: int) -> list[int]:
    """``reps`` spread over ``rounds`` as evenly as possible (earlier rounds get the rest)."""
    if reps < 0 or rounds < 1:
        raise ValueError(f"need reps >= 0 and rounds >= 1, not {reps} and {rounds}")
    return [reps // rounds + (1 if i < reps % rounds else 0) for i in range(rounds)]


def default_delay_reps(reps: int) -> int:
    """The delayed path is a sanity check, not a tail figure: a fifth of the reps (at 50 ms each)."""
    return max(1, reps // 5) if reps else 0


def new_path_result(path: LinkPath) -> dict[str, Any]:
    return {
        "label": path.label,
        "bridge": path.bridge,
        "delay_ms": path.delay_ms,
        "samples_ms": [],
        "runs": 0,
        "ok": 0,
        "bad_count": 0,
        "bad": [],
        "unsolicited": 0,
        "example": None,
        "errors": [],
    }


def merge_client(into: dict[str, Any], client: Mapping[str, Any]) -> None:
    """Add one client run's JSON (``link_client.ClientResult``) to a path's running totals."""
    into["runs"] += 1
    into["samples_ms"] += [ns / 1e6 for ns in client.get("samples_ns", [])]
    into["ok"] += int(client.get("ok", 0))
    into["bad_count"] += int(client.get("bad_count", 0))
    into["bad"] = (into["bad"] + list(client.get("bad", [])))[:5]
    into["unsolicited"] += int(client.get("unsolicited", 0))
    if into["example"] is None:
        into["example"] = client.get("example")
    if client.get("error"):
        into["errors"].append(str(client["error"]))


def parse_client_output(stdout: str, stderr: str, returncode: int) -> dict[str, Any]:
    """The client's JSON line; a stand-in result carrying the error when there is none."""
    lines = stdout.strip().splitlines()
    try:
        data = json.loads(lines[-1]) if lines else None
    except ValueError:
        data = None
    if isinstance(data, dict):
        return data
    tail = " | ".join(stderr.strip().splitlines()[-3:])
    return {"samples_ns": [], "error": f"link client exited {returncode} without a result: {tail}"[:2000]}


def run_client(
    target: str, *, reps: int, warmup: int, timeout: float = 5.0, command: str = COMMAND
) -> dict[str, Any]:
    """One client process against ``target`` (``tcp:HOST:PORT`` or ``pty:PATH``)."""
    argv = [
        sys.executable, str(CLIENT), target,
        "--command", command, "--reps", str(reps), "--warmup", str(warmup), "--timeout", str(timeout),
    ]  # fmt: skip
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60.0 + (reps + warmup) * timeout / 10,
            check=False,
            start_new_session=True,  # a terminal's Ctrl-C is ours to handle; run() kills it
        )
    except subprocess.TimeoutExpired as exc:
        return {"samples_ns": [], "error": f"link client did not finish within {exc.timeout:.0f}s"}
    return parse_client_output(proc.stdout, proc.stderr, proc.returncode)


# ---- the parts ----------------------------------------------------------------------------


@contextmanager
def _emulator(settings: Any, workdir: Path) -> Iterator[Any]:
    """The emulator as a pair gets it (process backend, its RAPI trace on), stopped after."""
    from harness.emulators.base import EmulatorSpec
    from harness.emulators.process import ProcessBackend
    from harness.ports import PortAllocator

    ports = None if settings.emulator_is_ours else PortAllocator(settings.port_lock_dir)
    backend = ProcessBackend(settings, ports=ports)
    backend.check()
    spec = EmulatorSpec(
        instance="bench-link",
        index=0,
        session="bench-link",
        run_dir=workdir,
        trace_path=workdir / "emulator-trace.jsonl",
        startup_timeout=settings.emulator_timeout,
    )
    emulator = backend.start(spec)  # polls the ready line and GET /api/status, with deadlines
    try:
        yield emulator
    finally:
        emulator.stop()


@contextmanager
def _target(path: LinkPath, emulator: Any, workdir: Path, bridge_timeout: float) -> Iterator[str]:
    """The client's target for ``path``; a bridge is started for it and stopped after."""
    host, port = emulator.rapi_host, emulator.rapi_port
    if path.bridge is None:
        yield f"tcp:{host}:{port}"
        return
    common: dict[str, Any] = {
        "instance": f"bench-link-{path.key}",
        "link": workdir / f"rapi-{path.key}.pty",
        "rapi_host": host,
        "rapi_port": port,
        "log_path": workdir / f"bridge-{path.key}.log",
        "timeout": bridge_timeout,
    }
    trace = workdir / f"rapi-trace-{path.key}.jsonl"
    if path.bridge == "socat":
        from harness.bridge import SocatBridge
        from harness.trace import socat_tracer

        tracer = socat_tracer(common["log_path"], trace).start()  # as Pair does for socat
        socat = SocatBridge(**common)
        try:
            socat.start()  # polls for the PTY link with a deadline
            yield f"pty:{socat.link}"
        finally:
            socat.stop()
            tracer.stop()
        return
    from harness.fault_bridge import FaultBridge

    bridge = FaultBridge(**common, trace_path=trace)
    try:
        bridge.start()  # PTY linked and TCP connected (polled with a deadline) when it returns
        if path.delay_ms:
            with bridge.fault(delay_ms=path.delay_ms):
                yield f"pty:{bridge.link}"
        else:
            yield f"pty:{bridge.link}"
    finally:
        bridge.stop()


# ---- the measurement ----------------------------------------------------------------------


def measure_link(
    settings: Any,
    *,
    reps: int,
    warmup: int = WARMUP,
    rounds: int = ROUNDS,
    delay_reps: int | None = None,
    timeout: float = 5.0,
    logs_dir: Path | None = None,
    out: dict[str, Any] | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """Measure every path; fills ``out`` as it goes (so Ctrl-C keeps what was measured).

    The work dir (emulator and bridge logs, PTY links, traces; 0700) is removed afterwards,
    unless something went wrong and ``logs_dir`` was given: then it is kept there and named
    in ``out["logs"]``."""
    from harness.errors import HarnessError

    result: dict[str, Any] = out if out is not None else {}
    delay_reps = default_delay_reps(reps) if delay_reps is None else delay_reps
    rounds = max(1, min(rounds, reps or 1))
    result.update(
        {
            "command": frame(COMMAND).decode("ascii").rstrip("\r"),
            "reps": reps,
            "delay_reps": delay_reps,
            "warmup": warmup,
            "rounds": rounds,
            "client": "bench/link_client.py, its own process",
            "emulator": settings.emulator_description(),
            "paths": {p.key: new_path_result(p) for p in PATHS},
            "skipped": {},
            "error": None,
            "logs": None,
        }
    )
    if shutil.which("socat") is None:
        result["skipped"]["socat"] = SOCAT_MISSING
    plan = {p.key: split_reps(delay_reps if p.delay_ms else reps, rounds) for p in PATHS}
    if logs_dir is not None:
        logs_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="link-", dir=logs_dir))  # mkdtemp: mode 0700
    try:
        with _emulator(settings, workdir) as emulator:
            for r in range(rounds):
                for path in PATHS:
                    n = plan[path.key][r]
                    if n == 0 or path.key in result["skipped"]:
                        continue
                    entry = result["paths"][path.key]
                    try:
                        with _target(path, emulator, workdir, settings.bridge_timeout) as target:
                            client = run_client(target, reps=n, warmup=warmup, timeout=timeout)
                    except (HarnessError, OSError, subprocess.SubprocessError) as exc:
                        client = {"samples_ns": [], "error": f"{type(exc).__name__}: {exc}"[:2000]}
                    merge_client(entry, client)
                    if progress is not None:
                        progress(f"round {r + 1}/{rounds} {path.key}: {describe_run(client)}")
    except Exception as exc:  # the emulator did not start; the figures say "not measured"
        result["error"] = f"{type(exc).__name__}: {exc}"[:4000]
    finally:
        went_wrong = result["error"] is not None or any(e["errors"] for e in result["paths"].values())
        if went_wrong and logs_dir is not None:
            result["logs"] = str(workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return result


def describe_run(client: Mapping[str, Any]) -> str:
    samples = client.get("samples_ns") or []
    text = f"{len(samples)} round trips"
    if samples:
        ordered = sorted(samples)
        text += f", p50 {ordered[len(ordered) // 2] / 1e6:.3f} ms"
    if client.get("bad_count"):
        text += f", {client['bad_count']} bad replies"
    if client.get("error"):
        text += f", ERROR {client['error']}"
    return text


# ---- figures and the table ----------------------------------------------------------------


def link_figures(link: Mapping[str, Any]) -> dict[str, Any]:
    """Per path a latency summary (ms); p50 over the direct path; the delay as measured."""
    paths: dict[str, LatencySummary] = {}
    for key, entry in (link.get("paths") or {}).items():
        summary = latency_summary(entry.get("samples_ms") or [])
        if summary is not None:
            paths[key] = summary
    figures: dict[str, Any] = {"paths": paths}
    direct = paths.get("tcp")
    if direct is not None:
        figures["p50_over_direct_ms"] = {
            key: s["p50"] - direct["p50"] for key, s in paths.items() if key != "tcp"
        }
    delayed, base = paths.get("python_delay"), paths.get("python")
    if delayed is not None and base is not None:
        figures["delay_added_p50_ms"] = delayed["p50"] - base["p50"]
        figures["delay_min_ms"] = delayed["min"]
    return figures


def format_link(link: Mapping[str, Any], figures: Mapping[str, Any]) -> list[str]:
    """The printed section: one row per path, then the overheads and the delay check."""
    if not link:
        return []
    lines = [
        f"RAPI round trip, one {link.get('command', COMMAND)} at a time, client in its own process "
        f"({link.get('rounds')} rounds, {link.get('warmup')} warm-up each; ms):",
        f"  {'path':<34} {'n':>5} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8}  replies",
    ]
    summaries = figures.get("paths") or {}
    for path in PATHS:
        entry = (link.get("paths") or {}).get(path.key)
        if entry is None:
            continue
        skipped = (link.get("skipped") or {}).get(path.key)
        if skipped:
            lines.append(f"  {path.label:<34} not measured: {skipped}")
            continue
        s = summaries.get(path.key)
        cells = (
            " ".join(f"{s[k]:8.3f}" for k in ("p50", "p95", "p99", "max"))
            if s
            else " ".join(f"{'-':>8}" for _ in range(4))
        )
        bad = entry.get("bad_count", 0)
        replies = f"{entry.get('ok', 0)} $OK" + (f", {bad} bad {entry.get('bad', [])[:2]}" if bad else "")
        lines.append(f"  {path.label:<34} {(s['n'] if s else 0):>5} {cells}  {replies}")
        for error in entry.get("errors", [])[:2]:
            lines.append(f"      error: {error[:150]}")
    over = figures.get("p50_over_direct_ms") or {}
    if over:
        shown = [f"{key} {value:+.3f}" for key, value in over.items() if key != "python_delay"]
        lines.append("  p50 over direct TCP (ms): " + ", ".join(shown))
    if "delay_added_p50_ms" in figures:
        lines.append(
            f"  delay check: fault(delay_ms={DELAY_MS:g}) added {figures['delay_added_p50_ms']:.3f} ms "
            f"at p50 over the python bridge; fastest delayed round trip {figures['delay_min_ms']:.3f} ms"
        )
    if link.get("error"):
        lines.append(f"  link: ERROR {str(link['error']).splitlines()[0][:200]}")
    if link.get("logs"):
        lines.append(f"  link: logs kept in {link['logs']}")
    return lines
