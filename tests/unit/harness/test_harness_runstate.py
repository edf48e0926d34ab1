"""The state file and reaping: dead owners are reaped, live ones untouched, pid reuse guarded."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from harness.runstate import (
    SessionInfo,
    SessionState,
    list_sessions,
    proc_start_time,
    reap_dead_sessions,
    same_process,
)


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "60"], start_new_session=True)


def _wait_dead(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    return proc.wait(timeout)


def _dead_pid_and_start() -> tuple[int, int]:
    """A (pid, start time) that named a real process which has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    start = proc_start_time(proc.pid)
    proc.wait(10)
    assert start is not None
    return proc.pid, start


def _forge_owner(state: SessionState, pid: int, start: int | None) -> None:
    state.data["owner_pid"] = pid
    state.data["owner_start"] = start
    state._write()


def test_state_file_records_owner_children_and_links(tmp_path: Path) -> None:
    state = SessionState(tmp_path / "run", "abc123", argv=["harness", "up", "1"], kind="cli")
    child = _sleeper()
    try:
        state.add_child("evse-abc123-0/firmware", child.pid, role="firmware", instance="evse-abc123-0")
        state.add_link(state.dir / "i0" / "rapi.pty")
        data = json.loads(state.path.read_text())
        assert data["owner_pid"] == os.getpid()
        assert data["owner_start"] == proc_start_time(os.getpid())
        assert data["children"]["evse-abc123-0/firmware"]["start"] == proc_start_time(child.pid)
        assert data["links"] == [str(state.dir / "i0" / "rapi.pty")]
        assert data["kind"] == "cli"
        assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o700
        assert stat.S_IMODE(state.dir.stat().st_mode) == 0o700
        state.remove_child("evse-abc123-0/firmware")
        assert json.loads(state.path.read_text())["children"] == {}
    finally:
        child.kill()
        child.wait()


def test_dead_owner_is_reaped_live_owner_untouched(tmp_path: Path) -> None:
    run = tmp_path / "run"
    dead = SessionState(run, "dead01")
    live = SessionState(run, "live01")
    orphan, bystander = _sleeper(), _sleeper()
    try:
        dead.add_child("x/firmware", orphan.pid, role="firmware", instance="x")
        (dead.dir / "i0").mkdir()
        link = dead.dir / "i0" / "rapi.pty"
        link.symlink_to("/dev/pts/999")  # dangling, like a SIGKILLed socat's
        dead.add_link(link)
        _forge_owner(dead, *_dead_pid_and_start())
        live.add_child("y/firmware", bystander.pid, role="firmware", instance="y")

        reaped = reap_dead_sessions(run)

        assert [s for s, _ in reaped] == ["dead01"]
        assert _wait_dead(orphan) == -9
        assert not dead.dir.exists()
        assert not link.is_symlink()
        assert live.dir.exists()
        assert bystander.poll() is None
        assert [s.session for s in list_sessions(run)] == ["live01"]
    finally:
        for p in (orphan, bystander):
            p.kill()
            p.wait()


def test_pid_reuse_is_guarded_by_start_time(tmp_path: Path) -> None:
    run = tmp_path / "run"
    state = SessionState(run, "reuse1")
    innocent = _sleeper()
    try:
        real_start = proc_start_time(innocent.pid)
        assert real_start is not None
        state.add_child("x/firmware", innocent.pid, role="firmware", instance="x")
        # The recorded child had the same pid but started at another time: a different process.
        state.data["children"]["x/firmware"]["start"] = real_start - 1
        state._write()
        _forge_owner(state, *_dead_pid_and_start())

        reaped = reap_dead_sessions(run)

        assert [s for s, _ in reaped] == ["reuse1"]
        actions = reaped[0][1]
        assert not any("killed" in line for line in actions), actions
        assert innocent.poll() is None, "a process whose start time differs must not be killed"
    finally:
        innocent.kill()
        innocent.wait()


def test_owner_with_reused_pid_counts_as_dead(tmp_path: Path) -> None:
    state = SessionState(tmp_path / "run", "owner1")
    me = os.getpid()
    start = proc_start_time(me)
    assert start is not None
    _forge_owner(state, me, start + 12345)  # our pid, another start time
    info = list_sessions(tmp_path / "run")[0]
    assert not info.owner_alive()
    assert same_process(me, start)


def test_links_outside_the_session_dir_are_never_removed(tmp_path: Path) -> None:
    outside = tmp_path / "someone-elses.pty"
    outside.symlink_to("/dev/null")
    info = SessionInfo("s1", tmp_path / "run" / "sessions" / "s1", {"links": [str(outside)], "children": {}})
    info.dir.mkdir(parents=True)
    from harness.runstate import reap_session

    reap_session(info)
    assert outside.is_symlink()
    assert not info.dir.exists()


def test_proc_start_time_of_an_exited_process_is_gone() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(10)
    assert proc_start_time(proc.pid) is None  # reaped and (almost surely) not reused yet
    assert proc_start_time(os.getpid()) is not None


def test_refuses_a_symlinked_run_root(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "run").symlink_to(target)
    from harness.errors import HarnessError

    with pytest.raises(HarnessError):
        SessionState(tmp_path / "run", "s")
