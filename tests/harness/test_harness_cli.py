"""`harness up` as a user runs it: a subprocess, output to files, signals from outside."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import requests

from harness.runstate import proc_start_time
from tests.harness.support import env_for, poll, process_gone

HARNESS = [sys.executable, "-m", "harness"]


def _start_up(tmp_path: Path, run_root: Path, n: int, *extra: str) -> tuple[subprocess.Popen[bytes], Path]:
    out = tmp_path / "up.out"
    with out.open("wb") as stdout, (tmp_path / "up.err").open("wb") as stderr:
        proc = subprocess.Popen(
            [*HARNESS, "up", str(n), "--json", *extra],
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            env=env_for(run_root),
            start_new_session=True,
        )
    return proc, out


def _summary(proc: subprocess.Popen[bytes], out: Path, tmp_path: Path) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        if proc.poll() is not None:
            raise AssertionError(f"harness up exited {proc.returncode}: {(tmp_path / 'up.err').read_text()}")
        text = out.read_text()
        return json.loads(text) if text.endswith("\n") else None

    return poll(ready, "harness up --json document", timeout=60)


def _children(summary: dict[str, Any]) -> list[tuple[int, int | None]]:
    pids = [pid for inst in summary["instances"] for pid in inst["pids"].values() if pid]
    return [(pid, proc_start_time(pid)) for pid in pids]


def _assert_all_gone(summary: dict[str, Any], children: list[tuple[int, int | None]]) -> None:
    for pid, start in children:
        poll(lambda pid=pid, start=start: process_gone(pid, start), f"child pid {pid} gone", timeout=10)
    for inst in summary["instances"]:
        assert not Path(inst["pty_path"]).is_symlink(), inst["pty_path"]
    assert not Path(summary["run_dir"]).exists()


def test_up_3_serves_then_sigint_exits_130_and_leaves_nothing(tmp_path: Path, run_root: Path) -> None:
    proc, out = _start_up(tmp_path, run_root, 3)
    try:
        summary = _summary(proc, out, tmp_path)
        instances = summary["instances"]
        assert len(instances) == 3
        assert len({i["firmware_url"] for i in instances}) == 3
        assert len({i["emulator_url"] for i in instances}) == 3
        assert len({i["hostname"] for i in instances}) == 3
        for inst in instances:
            status = requests.get(inst["firmware_url"] + "/status", timeout=5).json()
            assert status["state"] != 0
            assert requests.get(inst["emulator_url"] + "/api/status", timeout=5).status_code == 200
            assert Path(inst["pty_path"]).is_symlink()
            assert all(Path(p).is_file() for p in inst["logs"].values())
        children = _children(summary)
        assert len(children) == 9
        assert all(start is not None for _, start in children)

        status = subprocess.run(
            [*HARNESS, "status", "--json"], env=env_for(run_root), capture_output=True, timeout=30, check=True
        )
        sessions = json.loads(status.stdout)
        assert [(s["session"], s["owner_alive"], s["kind"]) for s in sessions] == [
            (summary["session"], True, "cli")
        ]

        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(30) == 130
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    _assert_all_gone(summary, children)
    assert "stopping" in (tmp_path / "up.err").read_text()


def test_sigterm_exits_143(tmp_path: Path, run_root: Path) -> None:
    proc, out = _start_up(tmp_path, run_root, 1)
    try:
        summary = _summary(proc, out, tmp_path)
        children = _children(summary)
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(30) == 143
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    _assert_all_gone(summary, children)


def test_sigkill_of_up_then_down_leaves_nothing(tmp_path: Path, run_root: Path) -> None:
    proc, out = _start_up(tmp_path, run_root, 2)
    try:
        summary = _summary(proc, out, tmp_path)
        children = _children(summary)
        assert len(children) == 6
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # PR_SET_PDEATHSIG: the children die with their parent, before anyone reaps.
    for pid, start in children:
        poll(lambda pid=pid, start=start: process_gone(pid, start), f"orphan pid {pid} died", timeout=10)
    assert Path(summary["state_file"]).exists()  # left for the reaper

    listed = subprocess.run(
        [*HARNESS, "status", "--json"], env=env_for(run_root), capture_output=True, timeout=30, check=True
    )
    assert [(s["session"], s["owner_alive"]) for s in json.loads(listed.stdout)] == [
        (summary["session"], False)
    ]
    down = subprocess.run(
        [*HARNESS, "down"], env=env_for(run_root), capture_output=True, text=True, timeout=60, check=False
    )
    assert down.returncode == 0, down.stderr
    assert f"removed {summary['run_dir']}" in down.stdout
    _assert_all_gone(summary, children)


def test_down_stops_a_live_up_session(tmp_path: Path, run_root: Path) -> None:
    proc, out = _start_up(tmp_path, run_root, 1)
    try:
        summary = _summary(proc, out, tmp_path)
        children = _children(summary)
        down = subprocess.run(
            [*HARNESS, "down", summary["session"]],
            env=env_for(run_root),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert down.returncode == 0, down.stderr
        assert proc.wait(30) == 143
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    _assert_all_gone(summary, children)


def test_missing_binary_is_reported_before_anything_starts(tmp_path: Path, run_root: Path) -> None:
    result = subprocess.run(
        [*HARNESS, "up", "1", "--native", "no/such/program"],
        env=env_for(run_root),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert str(tmp_path / "no/such/program") in result.stderr
    assert "fix:" in result.stderr
    assert not (run_root / "sessions").exists()


def test_logs_prints_an_instances_logs(tmp_path: Path, run_root: Path) -> None:
    proc, out = _start_up(tmp_path, run_root, 1)
    try:
        summary = _summary(proc, out, tmp_path)
        logs = subprocess.run(
            [*HARNESS, "logs", "0", "--part", "firmware"],
            env=env_for(run_root),
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert "Server started" in logs.stdout
        assert summary["instances"][0]["logs"]["firmware"] in logs.stdout
    finally:
        os.kill(proc.pid, signal.SIGINT)
        proc.wait(30)


STUBBORN_FIRMWARE = """\
#!{python}
import signal, subprocess, sys, time
if "--help" in sys.argv:
    sys.exit(0)
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # makes an orderly stop take its full 5 s
child = subprocess.Popen([sys.executable, "-m", "openevse_sim", *sys.argv[1:]])
child.wait()
time.sleep(3600)
"""


def test_second_sigint_forces_and_still_leaves_nothing(tmp_path: Path, run_root: Path) -> None:
    stubborn = tmp_path / "stubborn-firmware"
    stubborn.write_text(STUBBORN_FIRMWARE.format(python=sys.executable))
    stubborn.chmod(0o755)
    proc, out = _start_up(tmp_path, run_root, 1, "--native", str(stubborn))
    try:
        summary = _summary(proc, out, tmp_path)
        children = _children(summary)
        os.kill(proc.pid, signal.SIGINT)
        poll(lambda: "stopping" in (tmp_path / "up.err").read_text(), "orderly stop begun")
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(4) == 130  # well before the 5 s the orderly stop would wait
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "killing everything now" in (tmp_path / "up.err").read_text()
    _assert_all_gone(summary, children)


def test_doctor_passes_here_and_names_the_fix_for_a_bad_binary(tmp_path: Path, run_root: Path) -> None:
    ok = subprocess.run(
        [*HARNESS, "doctor"], env=env_for(run_root), capture_output=True, text=True, timeout=120, check=False
    )
    assert ok.returncode == 0, ok.stdout
    assert "[ok  ] firmware: STAND-IN" in ok.stdout
    assert "[ok  ] free ports" in ok.stdout
    broken = tmp_path / "program"
    broken.write_text(
        "#!/bin/sh\necho 'error while loading shared libraries: libavahi-client.so.3' >&2\nexit 127\n"
    )
    broken.chmod(0o755)
    bad = subprocess.run(
        [*HARNESS, "doctor"],
        env=env_for(run_root, NATIVE_BINARY_PATH=str(broken)),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert bad.returncode == 1
    assert "[FAIL] firmware" in bad.stdout
    assert "libavahi-client.so.3" in bad.stdout
    assert "fix: missing shared libraries?" in bad.stdout
