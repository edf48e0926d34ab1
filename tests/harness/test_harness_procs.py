"""ManagedProcess with real children: log files, process groups, parent-death signal."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

from harness.procs import ManagedProcess
from harness.runstate import proc_start_time
from tests.harness.support import poll, process_gone

SPAWN_FROM_SHORT_LIVED_THREAD = """
import sys, threading
from pathlib import Path
from harness.procs import ManagedProcess

log = Path(sys.argv[1])
procs = []

def spawn():
    procs.append(ManagedProcess("sleeper", ["sleep", "120"], log_path=log).start())

t = threading.Thread(target=spawn)
t.start()
t.join()  # the forking thread is gone; PDEATHSIG must not fire yet
print(procs[0].pid, flush=True)
sys.stdin.read()  # wait until the test kills us
"""


def test_children_survive_their_spawning_thread_but_not_their_process(tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", SPAWN_FROM_SHORT_LIVED_THREAD, str(tmp_path / "child.log")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        start = proc_start_time(child)
        assert start is not None, "the child died with the thread that asked for it"
        assert os.getpgid(child) == child  # its own process group
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        poll(lambda: process_gone(child, start), f"child {child} killed by PDEATHSIG", timeout=10)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_output_goes_to_one_log_file_and_stop_kills_the_group(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    script = (
        "import subprocess, sys, time\n"
        "print('to stdout', flush=True); print('to stderr', file=sys.stderr, flush=True)\n"
        "g = subprocess.Popen(['sleep', '120']); print('grandchild', g.pid, flush=True)\n"
        "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"  # make stop escalate
        "time.sleep(120)\n"
    )
    proc = ManagedProcess("x", [sys.executable, "-c", script], log_path=log).start()

    def grandchild_pid() -> int | None:
        found = re.search(r"^grandchild (\d+)$", log.read_text(), re.MULTILINE)
        return int(found.group(1)) if found else None

    grandchild = poll(grandchild_pid, "grandchild line")
    text = log.read_text()
    g_start = proc_start_time(grandchild)
    assert "to stdout" in text
    assert "to stderr" in text
    assert proc.alive() is None
    proc.stop(timeout=0.5)  # SIGTERM ignored → SIGKILL to the whole group
    assert proc.alive() == "killed by SIGKILL"
    poll(lambda: process_gone(grandchild, g_start), "grandchild killed with the group")
    proc.stop()  # idempotent


def test_restart_appends_and_log_since_start_sees_only_the_new_run(tmp_path: Path) -> None:
    log = tmp_path / "y.log"
    proc = ManagedProcess("y", [sys.executable, "-c", "print('run', flush=True)"], log_path=log)
    proc.start()
    proc.wait(10)
    first = proc.log_since_start()
    proc.start()
    proc.wait(10)
    assert first == "run\n"
    assert proc.log_since_start() == "run\n"
    assert log.read_text().count("\nrun") == 2
    assert proc.alive() == "exit code 0"


def test_spawning_from_many_threads_at_once(tmp_path: Path) -> None:
    procs: list[ManagedProcess] = []
    lock = threading.Lock()

    def spawn(i: int) -> None:
        p = ManagedProcess(f"p{i}", ["sleep", "30"], log_path=tmp_path / f"{i}.log").start()
        with lock:
            procs.append(p)

    threads = [threading.Thread(target=spawn, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert len({p.pid for p in procs}) == 8
        assert all(p.alive() is None for p in procs)
    finally:
        for p in procs:
            p.stop()
    assert all(p.alive() == "killed by SIGTERM" for p in procs)
