"""The process contract (docs/architecture.md): ready line, env names, SIGTERM, trace, errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from emulator import rapi


def test_ready_line_is_the_only_stdout_and_ports_answer(emulator) -> None:
    ready = emulator.ready
    assert set(ready) == {"event", "web_port", "rapi_port", "pid"}
    assert ready["event"] == "ready"
    assert ready["pid"] == emulator.proc.pid
    assert emulator.get("/api/status").status_code == 200
    with socket.create_connection(("127.0.0.1", ready["rapi_port"]), timeout=5):
        pass
    assert emulator.stdout.read_text().count("\n") == 1
    assert "ready:" in emulator.stderr.read_text()


def test_upstream_env_names(start_emulator) -> None:
    env = os.environ | {
        "SERIAL_MODE": "tcp",
        "SERIAL_TCP_PORT": "0",
        "WEB_PORT": "0",
        "WEB_HOST": "127.0.0.1",
    }
    emu = start_emulator(env=env)
    assert emu.get("/api/status").status_code == 200


def test_sigterm_exits_0_within_1s(start_emulator, connect) -> None:
    emu = start_emulator()
    client = connect.tcp(emu.rapi_port)
    client.cmd("GV")
    emu.get("/api/status")
    start = time.monotonic()
    emu.proc.send_signal(signal.SIGTERM)
    assert emu.proc.wait(5) == 0
    elapsed = time.monotonic() - start
    assert elapsed < 1.0, f"SIGTERM took {elapsed:.2f} s (contract: < 1 s)"


def test_sigint_exits_0(start_emulator) -> None:
    emu = start_emulator()
    emu.proc.send_signal(signal.SIGINT)
    assert emu.proc.wait(5) == 0


def test_pty_link_is_removed_on_exit(start_emulator, tmp_path) -> None:
    link = tmp_path / "rapi.pty"
    emu = start_emulator("--serial-mode", "pty", "--serial-pty-path", str(link))
    assert link.is_symlink()
    emu.proc.send_signal(signal.SIGTERM)
    assert emu.proc.wait(5) == 0
    assert not link.exists()
    assert not link.is_symlink()


def test_trace_file_records_every_frame(start_emulator, connect, tmp_path) -> None:
    path = tmp_path / "trace.jsonl"
    emu = start_emulator("--trace", str(path))
    c = connect.tcp(emu.rapi_port)
    c.wait_async("AB", lambda t: True)
    c.send(b"$GV^35\r")
    c.send(b"$GV^00\r")
    c.cmd("FS")
    c.wait_async("AT", lambda t: True)
    emu.proc.send_signal(signal.SIGTERM)
    assert emu.proc.wait(5) == 0
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    summary = [(e["dir"], e["raw"], e["command"], e["checksum_ok"]) for e in entries]
    assert summary == [
        ("tx", "$AB 00 8.2.2^1F", "AB", True),
        ("rx", "$GV^35", "GV", True),
        ("tx", "$OK 8.2.2 5.2.1^2E", "GV", True),
        ("rx", "$GV^00", "GV", False),
        ("tx", "$NK^21", "GV", True),
        ("rx", "$FS^31", "FS", True),
        ("tx", "$OK^20", "FS", True),
        ("tx", rapi.frame("$AT fe 01 32 0000")[:-1].decode(), "AT", True),
    ]
    times = [e["t"] for e in entries]
    assert times == sorted(times)
    assert [e.get("kind") for e in entries if e["dir"] == "tx"] == [
        "async",
        "reply",
        "reply",
        "reply",
        "async",
    ]


def test_port_in_use_exits_1_with_a_message(tmp_path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out, err = tmp_path / "out", tmp_path / "err"
        with out.open("wb") as o, err.open("wb") as e:
            proc = subprocess.run(
                [sys.executable, "-m", "emulator", "--serial-tcp-port", str(port), "--web-port", "0"],
                stdout=o,
                stderr=e,
                timeout=30,
                check=False,
            )
    assert proc.returncode == 1
    assert out.read_text() == ""
    assert "cannot start" in err.read_text()


def test_bad_flag_exits_2(tmp_path) -> None:
    err = tmp_path / "err"
    with err.open("wb") as e:
        proc = subprocess.run(
            [sys.executable, "-m", "emulator", "--web-port", "nope"],
            stdout=subprocess.DEVNULL,
            stderr=e,
            timeout=30,
            check=False,
        )
    assert proc.returncode == 2
    assert "not a port number" in err.read_text()


@pytest.mark.parametrize("mcu", ["ABCDEF1234"])
def test_mcu_id_flag(start_emulator, connect, mcu: str) -> None:
    emu = start_emulator("--mcu-id", mcu)
    assert connect.tcp(emu.rapi_port).cmd("GI") == ["$OK", mcu]
