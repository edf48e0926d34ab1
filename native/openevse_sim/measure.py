"""Numbers for the stand-in, measured, never asserted: `python -m openevse_sim.measure`.

Prints launch → `Server started` (wall and the process's own CPU time), resident memory
once started, and how long 4 instances take to list each other after `POST
/loadsharing/discover`. Performance targets live here and in `bench/`, not in tests."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from openevse_sim.identity import identity_from_chip_id


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Sim:
    def __init__(self, root: Path, name: str, chip: int) -> None:
        self.dir = root / name
        self.dir.mkdir()
        self.port = _free_port()
        self.chip = chip
        self.out = self.dir / "stdout.log"
        env = dict(os.environ, OPENEVSE_CHIP_ID=f"0x{chip:016X}")
        argv = [sys.executable, "-m", "openevse_sim", "--rapi-serial", str(self.dir / "no-pty")]
        argv += ["--set-config", f"www_http_port={self.port}", "--set-config", f"hostname={name}"]
        self.t0 = time.monotonic()
        with self.out.open("wb") as out, (self.dir / "stderr.log").open("wb") as err:
            self.proc = subprocess.Popen(argv, cwd=self.dir, env=env, stdout=out, stderr=err)

    def wait_started(self, timeout: float = 15.0) -> tuple[float, float]:
        deadline = time.monotonic() + timeout
        while b"Server started" not in self.out.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"stand-in did not start; see {self.out}")
            time.sleep(0.005)
        return time.monotonic() - self.t0, _cpu_s(self.proc.pid)

    def request(self, method: str, path: str) -> Any:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method)
        with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 (our own loopback URL)
            return json.loads(resp.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _discovery(root: Path, token: int) -> float:
    sims = [
        _Sim(
            root,
            f"measure-{token:04x}-{i}",
            (0x1234000090ABCDEF + (token << 32) + (i << 16)) & 0xFFFFFFFFFFFFFFFF,
        )
        for i in range(4)
    ]
    try:
        for sim in sims:
            sim.wait_started()
        ids = {sim: identity_from_chip_id(sim.chip).long_id for sim in sims}
        begin = time.monotonic()
        for sim in sims:
            sim.request("POST", "/loadsharing/discover")
        while time.monotonic() - begin < 30:
            done = True
            for sim in sims:
                online = {r["id"] for r in sim.request("GET", "/loadsharing/peers") if r["online"]}
                done &= {ids[o] for o in sims if o is not sim} <= online
            if done:
                return time.monotonic() - begin
            time.sleep(0.02)
        return float("nan")
    finally:
        for sim in sims:
            sim.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="openevse-sim-measure-"))
    try:
        starts, cpus, rss = [], [], []
        for i in range(args.reps):
            sim = _Sim(root, f"start{i}", 0x1234000090ABCDEF + (i << 16))
            try:
                wall, cpu = sim.wait_started()
                starts.append(wall)
                cpus.append(cpu)
                rss.append(_rss_mb(sim.proc.pid))
            finally:
                sim.stop()
        token = secrets.randbelow(0xFFFF)
        disc = [_discovery(root, (token + i) & 0xFFFF) for i in range(max(1, args.reps // 2))]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    median = statistics.median(starts)
    print(
        f"launch -> 'Server started': median {median:.3f} s, min {min(starts):.3f} s, max {max(starts):.3f} s"
    )
    print(f"  process CPU by then: max {max(cpus):.2f} s  (target <= 0.5 s)")
    print(f"resident memory once started: max {max(rss):.1f} MB  (target <= 60 MB)")
    print(
        "4 instances list each other after POST discover: "
        f"{', '.join(f'{d:.2f}' for d in disc)} s  (target <= 2 s)"
    )
    print(f"load average: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
