"""Measure the emulator as a harness sees it: ``python -m emulator.measure [--runs N]``.

Prints one JSON object: spawn-to-ready-line times, RAPI round trip percentiles on loopback
($GS, one outstanding, as the firmware sends), resident memory after traffic, and the
SIGTERM-to-exit time. Targets (issue 2): ready ≤ 0.3 s, p99 ≤ 2 ms, RSS ≤ 40 MB. It only
reports; tests record these numbers without asserting them (a shared machine is noisy).
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from emulator import rapi


def _spawn(workdir: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any], float]:
    out = workdir / "out"
    start = time.monotonic()
    with out.open("wb") as stdout:
        proc = subprocess.Popen(
            [sys.executable, "-m", "emulator", "--serial-tcp-port", "0", "--web-port", "0"],
            stdout=stdout,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
    deadline = start + 20
    while not out.read_text().endswith("\n"):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"emulator gave no ready line (exit {proc.returncode})")
        time.sleep(0.001)
    return proc, json.loads(out.read_text()), time.monotonic() - start


def _rss_kb(pid: int) -> dict[str, int]:
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


def _round_trips(port: int, count: int) -> list[float]:
    frame = rapi.command("GS")
    samples: list[float] = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = rapi.FrameReader()
        pending: list[bytes] = []

        def next_reply() -> bytes:
            while True:
                while pending:
                    raw = pending.pop(0)
                    if raw.startswith((b"$OK", b"$NK")):
                        return raw
                data = sock.recv(4096)
                if not data:
                    raise ConnectionError("emulator closed the connection")
                pending.extend(reader.feed(data))

        for _ in range(count):
            t0 = time.perf_counter()
            sock.sendall(frame)
            reply = next_reply()
            samples.append(time.perf_counter() - t0)
            if not reply.startswith(b"$OK"):
                raise RuntimeError(f"unexpected reply {reply!r}")
    return samples


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(runs: int = 5, round_trips: int = 2000) -> dict[str, Any]:
    ready_times: list[float] = []
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="emu-measure-") as tmp:
        for i in range(runs):
            workdir = Path(tmp) / str(i)
            workdir.mkdir()
            proc, ready, elapsed = _spawn(workdir)
            try:
                ready_times.append(elapsed)
                if i == runs - 1:
                    samples = _round_trips(int(ready["rapi_port"]), round_trips)
                    conn = http.client.HTTPConnection("127.0.0.1", int(ready["web_port"]), timeout=5)
                    for _ in range(200):  # some control API traffic before reading RSS
                        conn.request("GET", "/api/status")
                        conn.getresponse().read()
                    conn.close()
                    result["rapi_round_trip_ms"] = {
                        "n": len(samples),
                        "p50": round(statistics.median(samples) * 1000, 3),
                        "p99": round(_percentile(samples, 0.99) * 1000, 3),
                        "max": round(max(samples) * 1000, 3),
                    }
                    result["memory_kb"] = _rss_kb(proc.pid)
                    t0 = time.monotonic()
                    proc.send_signal(signal.SIGTERM)
                    result["sigterm_exit"] = {
                        "code": proc.wait(5),
                        "seconds": round(time.monotonic() - t0, 3),
                    }
            finally:
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait(5)
    result["ready_s"] = {
        "runs": runs,
        "median": round(statistics.median(ready_times), 3),
        "max": round(max(ready_times), 3),
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--round-trips", type=int, default=2000)
    args = parser.parse_args()
    print(json.dumps(measure(args.runs, args.round_trips), indent=2))


if __name__ == "__main__":
    main()
