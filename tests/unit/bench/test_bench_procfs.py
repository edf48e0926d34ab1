"""Process-group memory and CPU, read from a fake /proc."""

from __future__ import annotations

import os
from pathlib import Path

from bench.procfs import Usage, group_usage, parse_stat, process_usage


def _stat(pid: int, comm: str, pgrp: int, utime: int, stime: int) -> str:
    # fields: pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime ...
    return f"{pid} ({comm}) S 1 {pgrp} {pgrp} 0 -1 0 0 0 0 0 {utime} {stime} 0 0 20 0 1 0\n"


def _fake_proc(root: Path, pid: int, comm: str, pgrp: int, rss_kb: int, pss_kb: int, ticks: int) -> None:
    d = root / str(pid)
    d.mkdir()
    (d / "stat").write_text(_stat(pid, comm, pgrp, ticks, ticks))
    (d / "status").write_text(f"Name:\t{comm}\nVmRSS:\t    {rss_kb} kB\nThreads:\t1\n")
    (d / "smaps_rollup").write_text(f"00400000-7fff [rollup]\nRss:  {rss_kb} kB\nPss:  {pss_kb} kB\n")


def test_parse_stat_survives_spaces_and_parentheses_in_the_name() -> None:
    assert parse_stat(_stat(42, "python3 (x) y", 40, 7, 3)) == (40, 7, 3)


def test_process_usage_reads_rss_pss_and_cpu(tmp_path: Path) -> None:
    _fake_proc(tmp_path, 10, "fw", 10, 2048, 1024, 50)
    usage = process_usage(10, proc=tmp_path, ticks=100)
    assert usage == Usage(rss_kb=2048, pss_kb=1024, cpu_s=1.0, processes=1)


def test_a_vanished_process_counts_as_nothing(tmp_path: Path) -> None:
    assert process_usage(99, proc=tmp_path, ticks=100) == Usage()


def test_group_usage_sums_each_group_and_ignores_others(tmp_path: Path) -> None:
    _fake_proc(tmp_path, 10, "fw", 10, 1000, 500, 10)
    _fake_proc(tmp_path, 11, "fw child", 10, 200, 100, 10)
    _fake_proc(tmp_path, 20, "socat", 20, 300, 150, 0)
    _fake_proc(tmp_path, 30, "someone else", 30, 9999, 9999, 99)
    (tmp_path / "self").mkdir()  # non-numeric entries are skipped
    totals = group_usage([10, 20, 40], proc=tmp_path, ticks=100)
    assert totals[10] == Usage(1200, 600, 0.4, 2)
    assert totals[20] == Usage(300, 150, 0.0, 1)
    assert totals[40] == Usage()


def test_group_usage_of_this_process_group_sees_us() -> None:
    totals = group_usage([os.getpgrp()])
    assert totals[os.getpgrp()].processes >= 1
    assert totals[os.getpgrp()].rss_kb > 0
