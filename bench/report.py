"""From samples to figures: aggregation, the floors, the printed table, the facts of the run."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.link import format_link
from bench.measure import PARTS, STAGES, RigSample
from bench.stats import Summary, summarize

LAGS = ("lag_emulator", "lag_firmware_http")


@dataclass(frozen=True)
class Floor:
    """A target from issue 9: ``stat`` of the figure at ``path`` must be ≤ ``limit``."""

    label: str
    path: tuple[str, ...]
    stat: str
    limit: float
    unit: str


FLOORS: tuple[Floor, ...] = (
    Floor("4 pairs ready", ("ready_s", "process", "4"), "p50", 1.5, "s"),
    Floor("16 pairs ready", ("ready_s", "process", "16"), "p50", 6.0, "s"),
    Floor("discovery convergence, 4 units", ("converge_s", "4"), "p50", 2.5, "s"),
    Floor("teardown of 4 pairs", ("teardown_s", "process", "4"), "p50", 1.0, "s"),
    Floor("resident memory per pair (RSS, worst)", ("rss_mb_per_pair", "all"), "max", 100.0, "MB"),
)


def _by_n(samples: Iterable[RigSample]) -> dict[int, list[RigSample]]:
    out: dict[int, list[RigSample]] = {}
    for s in samples:
        out.setdefault(s.n, []).append(s)
    return dict(sorted(out.items()))


def _put(target: dict[str, Any], key: str, summary: Summary | None) -> None:
    if summary is not None:
        target[key] = summary


def aggregate(samples: Sequence[RigSample], *, cpus: int | None = None) -> dict[str, Any]:
    """Every figure of the rig runs, as summaries keyed by backend and N (as strings).

    ``cpus`` (usable CPUs) adds ``cpu_floor_s``: the CPU the pairs and this process burn to get
    ready, spread over every CPU, and never less than one pair's CPU (its stages run one after
    another): the shortest bring-up this machine allows without making the processes cheaper."""
    figures: dict[str, Any] = {
        "ready_s": {},
        "teardown_s": {},
        "converge_s": {},
        "rss_mb_per_pair": {},
        "pss_mb_per_pair": {},
        "cpu_s_per_pair": {},
        "cpu_floor_s": {},
        "rig_overhead_s": {},
        "harness_cpu_s": {},
        "stages_s": {},
        "stage_share": {},
        "teardown_parts_s": {},
        "failures": {},
    }
    for backend in sorted({s.backend for s in samples}, key=lambda b: (b != "process", b)):
        for key in ("ready_s", "teardown_s", "stages_s", "stage_share", "teardown_parts_s"):
            figures[key][backend] = {}
        for n, group in _by_n(s for s in samples if s.backend == backend).items():
            key = str(n)
            ok = [s for s in group if s.ready_s is not None]
            _put(
                figures["ready_s"][backend], key, summarize([s.ready_s for s in ok if s.ready_s is not None])
            )
            _put(
                figures["teardown_s"][backend],
                key,
                summarize([s.teardown_s for s in ok if s.teardown_s is not None]),
            )
            failed = len(group) - len(ok) + sum(1 for s in ok if s.error)
            if failed:
                figures["failures"][f"{backend}/{n}"] = failed
            if not ok:
                continue
            stages: dict[str, Any] = {}
            for stage in (*STAGES, "pair_ready", *LAGS):
                _put(stages, stage, summarize([st[stage] for s in ok for st in s.stages if stage in st]))
            figures["stages_s"][backend][key] = stages
            figures["stage_share"][backend][key] = stage_share(stages)
            parts: dict[str, Any] = {}
            for part in PARTS:
                _put(parts, part, summarize([tp[part] for s in ok for tp in s.teardown_parts if part in tp]))
            figures["teardown_parts_s"][backend][key] = parts
    process = [s for s in samples if s.backend == "process" and s.ready_s is not None]
    all_rss: list[float] = []
    all_pss: list[float] = []
    for n, group in _by_n(process).items():
        key = str(n)
        _put(figures["converge_s"], key, summarize([s.converge_s for s in group if s.converge_s is not None]))
        totals = [u["total"] for s in group for u in s.usage if "total" in u]
        rss = [t["rss_mb"] for t in totals]
        pss = [t["pss_mb"] for t in totals]
        all_rss += rss
        all_pss += pss
        _put(figures["rss_mb_per_pair"], key, summarize(rss))
        _put(figures["pss_mb_per_pair"], key, summarize(pss))
        cpu = summarize([t["cpu_s"] for t in totals])
        _put(figures["cpu_s_per_pair"], key, cpu)
        _put(
            figures["rig_overhead_s"],
            key,
            summarize([s.rig_overhead_s for s in group if s.rig_overhead_s is not None]),
        )
        harness = summarize([s.harness_cpu_s for s in group if s.harness_cpu_s is not None])
        _put(figures["harness_cpu_s"], key, harness)
        if cpus and cpu is not None:
            own = harness["p50"] if harness is not None else 0.0
            figures["cpu_floor_s"][key] = max(cpu["p50"], (n * cpu["p50"] + own) / cpus)
    for part in PARTS:
        for metric in ("rss_mb", "pss_mb", "cpu_s"):
            values = [u[part][metric] for s in process for u in s.usage if part in u]
            _put(figures.setdefault(f"{metric}_by_part", {}), part, summarize(values))
    _put(figures["rss_mb_per_pair"], "all", summarize(all_rss))
    _put(figures["pss_mb_per_pair"], "all", summarize(all_pss))
    return figures


def suite_figures(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Wall time of every suite configuration (``n<instances>-w<workers>``) over its runs."""
    walls: dict[str, list[float]] = {}
    for run in runs:
        wall = run.get("wall_s")
        if isinstance(wall, float) and "timed out" not in str(run.get("error", "")):
            walls.setdefault(f"n{run['instances']}-w{run['workers']}", []).append(wall)
    out: dict[str, Any] = {}
    for key, values in walls.items():
        _put(out, key, summarize(values))
    return out


def stage_share(stages: Mapping[str, Summary]) -> dict[str, float]:
    """Each stage's share of a pair's bring-up, from the stages' means (they add up to 1)."""
    means = {s: stages[s]["mean"] for s in STAGES if s in stages}
    total = sum(means.values())
    if total <= 0:
        return {}
    return {s: m / total for s, m in means.items()}


def lookup(figures: Mapping[str, Any], path: Sequence[str]) -> Any:
    node: Any = figures
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def evaluate_floors(figures: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each floor with the measured value and whether it is met (None: not measured)."""
    rows: list[dict[str, Any]] = []
    for floor in FLOORS:
        summary = lookup(figures, floor.path)
        value = stat_of(summary, floor.stat) if isinstance(summary, Mapping) else None
        rows.append(
            {
                "label": floor.label,
                "figure": "/".join(floor.path),
                "stat": floor.stat,
                "limit": floor.limit,
                "unit": floor.unit,
                "measured": value,
                "met": None if value is None else bool(value <= floor.limit),
            }
        )
    return rows


def floor_for(path: Sequence[str]) -> Floor | None:
    return next((f for f in FLOORS if f.path == tuple(path)), None)


# ---- the table ----------------------------------------------------------------------------


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value:.3f}"
    return f"{value:.1f}"


def stat_of(summary: Mapping[str, Any] | None, stat: str) -> float | None:
    """One statistic of a summary, None when absent."""
    value = summary.get(stat) if summary else None
    return float(value) if isinstance(value, int | float) else None


def _row(label: str, n: str, summary: Summary | None, unit: str, floor: Floor | None) -> str:
    cells = [_fmt(summary[k] if summary else None, unit) for k in ("p50", "p95", "min", "max")]
    reps = str(summary["n"]) if summary else "0"
    note = ""
    if floor is not None:
        value = stat_of(summary, floor.stat)
        verdict = "not measured" if value is None else ("met" if value <= floor.limit else "MISSED")
        note = f"floor {floor.stat} <= {floor.limit:g} {floor.unit}: {verdict}"
    return f"{label:<34} {n:>4} {reps:>4} " + " ".join(f"{c:>8}" for c in cells) + f"  {unit:<2} {note}"


TABLE_ROWS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("time to ready, process", ("ready_s", "process"), "s"),
    ("time to ready, docker", ("ready_s", "docker"), "s"),
    ("teardown, process", ("teardown_s", "process"), "s"),
    ("teardown, docker", ("teardown_s", "docker"), "s"),
    ("mDNS convergence", ("converge_s",), "s"),
    ("RSS per pair", ("rss_mb_per_pair",), "MB"),
    ("PSS per pair", ("pss_mb_per_pair",), "MB"),
    ("CPU per pair to ready", ("cpu_s_per_pair",), "s"),
    ("rig overhead (beyond slowest pair)", ("rig_overhead_s",), "s"),
)


def format_table(results: Mapping[str, Any]) -> str:
    """The printed report: figures by N with floors, stage shares, suite runs, floors summary."""
    figures = results.get("figures", {})
    if results.get("rigs_skipped"):  # --link-only: no rig figures, no floors to compare
        lines = format_link(results.get("link") or {}, figures.get("link_ms") or {})
        lines.append(f"rigs, docker and suite: not measured ({results['rigs_skipped']})")
        lines += _machine_line(results)
        return "\n".join(lines)
    lines = [f"{'figure':<34} {'N':>4} {'reps':>4} {'p50':>8} {'p95':>8} {'min':>8} {'max':>8}  unit"]
    lines.append("-" * len(lines[0]))
    cold = figures.get("cold_first_rig_s")
    if cold:
        lines.append(_row("first rig of the process (N=1)", "1", cold, "s", None))
    for label, path, unit in TABLE_ROWS:
        node = lookup(figures, path)
        if not isinstance(node, Mapping):
            continue
        for n in sorted(node, key=lambda k: (k == "all", int(k) if k.isdigit() else 0)):
            lines.append(_row(label, n, node[n], unit, floor_for((*path, n))))
    by_part = figures.get("rss_mb_by_part", {})
    if by_part:
        pss = figures.get("pss_mb_by_part", {})
        cpu = figures.get("cpu_s_by_part", {})
        lines.append("")
        lines.append("per part, p50 over every pair: RSS / PSS MB, CPU seconds to ready")
        for part, rss in by_part.items():
            pss_p50 = stat_of(pss.get(part), "p50") or 0.0
            cpu_p50 = stat_of(cpu.get(part), "p50") or 0.0
            lines.append(f"  {part:<9} {rss['p50']:6.1f} / {pss_p50:5.1f} MB, {cpu_p50:.3f} s")
    floors_cpu = figures.get("cpu_floor_s", {})
    if floors_cpu:
        lines.append("")
        lines.append(
            "CPU-bound floor: max(CPU per pair, (N x CPU per pair + harness CPU) / usable CPUs)"
            " vs time to ready p50:"
        )
        ready = lookup(figures, ("ready_s", "process")) or {}
        for n in sorted(floors_cpu, key=int):
            p50 = stat_of(ready.get(n), "p50")
            shown = "-" if p50 is None else f"{p50:.3f}"
            lines.append(f"  N={n:>2}: floor {floors_cpu[n]:.3f} s, measured {shown} s")
    for backend, by_n in figures.get("stages_s", {}).items():
        if not by_n:
            continue
        lines.append("")
        lines.append(f"share of a pair's bring-up per stage, {backend} (p50 seconds in brackets):")
        for n in sorted(by_n, key=int):
            share = lookup(figures, ("stage_share", backend, n)) or {}
            parts = [
                f"{s} {share.get(s, 0.0) * 100:4.1f}% ({by_n[n][s]['p50']:.3f})"
                for s in STAGES
                if s in by_n[n]
            ]
            lines.append(f"  N={n:>2}: " + " | ".join(parts))
    lag_rows = [
        (backend, n, stages)
        for backend, by_n in figures.get("stages_s", {}).items()
        for n, stages in sorted(by_n.items(), key=lambda kv: int(kv[0]))
        if any(lag in stages for lag in LAGS)
    ]
    if lag_rows:
        lines.append(
            "readiness detection lag: harness noticed minus the part's own log line (p50 / max seconds):"
        )
        for backend, n, stages in lag_rows:
            cells = [
                f"{lag[4:]} {stages[lag]['p50']:.3f}/{stages[lag]['max']:.3f}"
                for lag in LAGS
                if lag in stages
            ]
            lines.append(f"  {backend} N={n:>2}: " + " | ".join(cells))
    for backend, by_n in figures.get("teardown_parts_s", {}).items():
        if not by_n:
            continue
        lines.append(f"teardown per part, {backend} (p50 / max seconds; parts in order, pairs in parallel):")
        for n in sorted(by_n, key=int):
            cells = [f"{p} {v['p50']:.3f}/{v['max']:.3f}" for p, v in by_n[n].items()]
            lines.append(f"  N={n:>2}: " + " | ".join(cells))
    link = results.get("link")
    if link:
        lines.append("")
        lines += format_link(link, figures.get("link_ms") or {})
    suite = results.get("suite")
    if suite:
        lines.append("")
        lines.append("integration suite (wall time per run; phases = sum of its setup/call/teardown times):")
        collect = results.get("suite_collect") or {}
        if isinstance(collect.get("wall_s"), float):
            lines.append(f"  pytest start-up + collection alone: {collect['wall_s']:.1f}s")
        for key, summary in (figures.get("suite_wall_s") or {}).items():
            if summary["n"] > 1:
                lines.append(_row(f"  suite wall time {key}", "", summary, "s", None))
        for run in suite:
            counts = ", ".join(f"{v} {k}" for k, v in run.get("counts", {}).items()) or "no summary"
            wall = run.get("wall_s")
            wall_text = f"{wall:7.1f}s" if isinstance(wall, float) else "      -"
            err = f"  [{run['error'].splitlines()[0][:100]}]" if run.get("error") else ""
            phases = run.get("phases_total_s")
            kinds = run.get("phases_by_kind_s") or {}
            split = "/".join(f"{kinds.get(k, 0.0):.1f}" for k in ("setup", "call", "teardown"))
            phases_text = (
                f" (phases {phases:.1f}s = {split} setup/call/teardown)" if isinstance(phases, float) else ""
            )
            what = f"--instances {run['instances']} -n {run['workers']} (run {run.get('rep', 1)})"
            lines.append(f"  {what}: {wall_text}{phases_text}  {counts}{err}")
            for failed in run.get("failed_tests", [])[:4]:
                lines.append(f"      {failed[:110]}")
    elif results.get("suite_skipped"):
        lines.append("")
        lines.append(f"integration suite: not run ({results['suite_skipped']})")
    if results.get("docker_skipped"):
        lines.append(f"docker: not measured ({results['docker_skipped']})")
    if results.get("link_skipped"):
        lines.append(f"RAPI link: not measured ({results['link_skipped']})")
    failures = figures.get("failures")
    if failures:
        lines.append(
            "failed repetitions (see results.json 'samples'): "
            + ", ".join(f"{k}: {v}" for k, v in failures.items())
        )
    lines.append("")
    lines.append("floors (issue 9; compared here, never asserted in tests):")
    for row in results.get("floors", []):
        value = row["measured"]
        shown = "not measured" if value is None else f"{value:.3f} {row['unit']}"
        verdict = {True: "met", False: "MISSED", None: "-"}[row["met"]]
        lines.append(
            f"  {row['label']:<40} {row['stat']} {shown:>14} <= {row['limit']:g} {row['unit']}: {verdict}"
        )
    base = results.get("baselines") or {}
    base_cells = [
        f"{k.removesuffix('_s')} {v * 1000:.1f} ms" for k, v in base.items() if isinstance(v, int | float)
    ]
    if base_cells:
        lines.append("baselines (fastest of 3; spawn: median): " + ", ".join(base_cells))
    lines += _machine_line(results)
    return "\n".join(lines)


def _machine_line(results: Mapping[str, Any]) -> list[str]:
    machine = results.get("machine", {})
    if not machine:
        return []
    return [
        f"machine: {machine.get('cpu_count')} cpus ({machine.get('cpu_model')}), load average at start "
        f"{machine.get('loadavg_start')}, at end {machine.get('loadavg_end')}"
    ]


# ---- facts of the run ---------------------------------------------------------------------


def cpu_model(cpuinfo: str) -> str | None:
    for line in cpuinfo.splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return None


def machine_facts() -> dict[str, Any]:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    try:
        meminfo = Path("/proc/meminfo").read_text().splitlines()
        mem_total_mb: float | None = next(
            (int(line.split()[1]) / 1024 for line in meminfo if line.startswith("MemTotal:")), None
        )
    except OSError:
        mem_total_mb = None
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = None
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "cpu_model": cpu_model(cpuinfo),
        "mem_total_mb": mem_total_mb,
        "kernel": platform.release(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


def git_facts(cwd: Path) -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(
                ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    status = git("status", "--porcelain")
    return {"commit": git("rev-parse", "HEAD"), "dirty": None if status is None else bool(status)}


def settings_facts(settings: Any) -> dict[str, Any]:
    from harness.settings import file_sha256

    path = settings.firmware_path
    return {
        "firmware": "stand-in (openevse_sim)" if settings.is_stand_in else str(path),
        "firmware_sha256": None if settings.is_stand_in or path is None else file_sha256(path),
        "stand_in": settings.is_stand_in,
        "emulator_backend": settings.emulator_backend,
        "emulator": settings.emulator_description(),
        "bridge": settings.resolved_bridge(),
        "mdns_interfaces": list(settings.mdns_interfaces) if settings.mdns_interfaces else None,
    }


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
