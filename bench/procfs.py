"""Memory and CPU of process groups, read from /proc (Linux only).

Every child of the harness leads its own process group (``start_new_session``), so a pair's
footprint is the sum over the groups of its firmware, bridge and emulator."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class Usage:
    """Summed over some processes: resident set (kB), proportional set (kB), CPU seconds."""

    rss_kb: int = 0
    pss_kb: int = 0
    cpu_s: float = 0.0
    processes: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.rss_kb + other.rss_kb,
            self.pss_kb + other.pss_kb,
            self.cpu_s + other.cpu_s,
            self.processes + other.processes,
        )


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:  # gone, or not ours to read
        return None


def _kb_field(text: str | None, name: str) -> int:
    """``VmRSS:     1234 kB`` → 1234; 0 when absent."""
    for line in (text or "").splitlines():
        if line.startswith(name + ":"):
            parts = line.split()
            return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    return 0


def parse_stat(text: str) -> tuple[int, int, int]:
    """``/proc/<pid>/stat`` → (pgrp, utime ticks, stime ticks). The command may hold spaces
    and parentheses, so fields are counted after the last ``)``."""
    rest = text[text.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state); pgrp is field 5, utime 14, stime 15.
    return int(rest[2]), int(rest[11]), int(rest[12])


def process_usage(pid: int, *, proc: Path = PROC, ticks: int | None = None) -> Usage:
    """One process; an empty ``Usage`` when it is gone."""
    base = proc / str(pid)
    stat = _read(base / "stat")
    if stat is None:
        return Usage()
    _, utime, stime = parse_stat(stat)
    hz = ticks or os.sysconf("SC_CLK_TCK")
    rss = _kb_field(_read(base / "status"), "VmRSS")
    pss = _kb_field(_read(base / "smaps_rollup"), "Pss")
    return Usage(rss, pss, (utime + stime) / hz, 1)


def group_usage(pgids: list[int], *, proc: Path = PROC, ticks: int | None = None) -> dict[int, Usage]:
    """Usage of every process in each of the process groups ``pgids`` (one scan of /proc)."""
    wanted = set(pgids)
    totals = {pgid: Usage() for pgid in pgids}
    try:
        entries = list(proc.iterdir())
    except OSError:
        return totals
    for entry in entries:
        if not entry.name.isdigit():
            continue
        stat = _read(entry / "stat")
        if stat is None:
            continue
        try:
            pgrp, _, _ = parse_stat(stat)
        except (ValueError, IndexError):
            continue
        if pgrp in wanted:
            totals[pgrp] = totals[pgrp] + process_usage(int(entry.name), proc=proc, ticks=ticks)
    return totals


def self_cpu_s() -> float:
    """CPU seconds of this process so far (all threads)."""
    t = os.times()
    return t.user + t.system
