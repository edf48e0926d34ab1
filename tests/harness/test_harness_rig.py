"""Rigs of real processes: emulator + bridge + firmware (stand-in or a fake), start to cleanup."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest

from harness.errors import ProcessDied, ReadinessTimeout
from harness.fault_bridge import FaultBridge
from harness.rig import HarnessWarning, Rig, RigStartError
from harness.runstate import proc_start_time
from harness.settings import Settings
from tests.harness.support import poll, process_gone


def _pids_with_start(rig: Rig) -> list[tuple[int, int | None]]:
    found = []
    for pair in rig:
        for pid in pair.pids().values():
            if pid is not None:
                found.append((pid, proc_start_time(pid)))
    return found


def test_rig_of_three_starts_in_parallel_and_cleans_up(settings: Settings, run_root: Path) -> None:
    with Rig(settings, 3) as rig:
        assert len(rig) == 3
        names = {p.name for p in rig}
        assert len(names) == 3
        assert all(name.startswith(f"evse-{rig.session}-") for name in names)
        assert len({p.firmware_port for p in rig}) == 3
        assert len({p.short_id for p in rig}) == 3
        for pair in rig:
            status = pair.api.get_json("/status")
            assert status["state"] != 0
            assert status["rapi_connected"] == 1
            config = pair.api.get_json("/config")
            assert config["hostname"] == pair.hostname
            assert config["wifi_serial"].lower() == pair.long_id
            assert pair.emulator_api.get("/api/status").status_code == 200
            assert pair.pty_path.is_symlink()
        pids = _pids_with_start(rig)
        links = [p.pty_path for p in rig]
        session_dir = rig.state.dir if rig.state else None
        assert len(pids) == 9  # firmware, socat and emulator per pair
    for pid, start in pids:
        assert process_gone(pid, start), f"pid {pid} survived teardown"
    assert not any(link.is_symlink() for link in links)
    assert session_dir is not None
    assert not session_dir.exists()


@pytest.mark.parametrize("bridge", ["socat", "python"])
def test_restarted_firmware_talks_to_its_emulator_again(settings: Settings, bridge: str) -> None:
    with Rig(settings.with_(bridge=bridge), 1) as rig:
        pair = rig[0]
        old_pid = pair.firmware.pid if pair.firmware else None
        pair.restart_firmware()
        assert pair.firmware is not None
        assert pair.firmware.pid != old_pid
        status = pair.api.get_json("/status")
        assert status["rapi_connected"] == 1
        assert status["state"] != 0
        # A command through the restarted link: plug a car in on the emulator, the firmware sees it.
        assert pair.emulator_api.post("/api/ev/connect").status_code == 200
        poll(lambda: pair.api.get_json("/status").get("vehicle") == 1, "vehicle 1 after restart")
        # The upstream key does the same (and returns the new process).
        proc = pair["restart_native"]()
        assert proc.pid == pair.firmware.pid
        poll(lambda: pair.api.get_json("/status").get("vehicle") == 1, "vehicle 1 after 2nd restart")


def test_stop_and_start_member(settings: Settings) -> None:
    with Rig(settings, 2) as rig:
        port = rig[1].firmware_port
        rig.stop_member(1)
        assert rig[1].firmware is not None
        assert rig[1].firmware.alive() is not None
        assert rig[0].api.get_json("/status")["state"] != 0  # the other member is untouched
        rig.start_member(1)
        assert rig[1].firmware_port == port
        assert rig[1].api.get_json("/status")["state"] != 0


def _fake_firmware(tmp_path: Path) -> Path:
    script = tmp_path / "fake-firmware"
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        "if '--help' in sys.argv: sys.exit(0)\n"
        "print('fake firmware booting: cannot open epoxyfsdata', flush=True)\n"
        "sys.exit(3)\n"
    )
    script.chmod(0o755)
    return script


def test_firmware_that_exits_during_startup_fails_fast_with_its_log(
    settings: Settings, tmp_path: Path
) -> None:
    fake = _fake_firmware(tmp_path)
    fw_settings = settings.with_(firmware_argv=(str(fake),), firmware_path=fake, is_stand_in=False)
    rig = Rig(fw_settings, 2)
    t0 = time.monotonic()
    with pytest.raises(RigStartError) as info:
        rig.start()
    total = time.monotonic() - t0
    errors = info.value.errors
    # The first failure stops the other pair at once (listed as aborted, not as a failure).
    assert len(errors) >= 1
    assert sorted([*errors, *info.value.aborted]) == [0, 1]
    for exc in errors.values():
        assert isinstance(exc, ProcessDied)
        assert exc.elapsed < 1.0, f"noticed the exit only after {exc.elapsed:.2f}s"
        assert "exit code 3" in str(exc)
        assert "cannot open epoxyfsdata" in str(exc)  # the log tail
        assert "firmware HTTP" in str(exc)  # the stage
    assert total < 10.0
    # Everything that had started (emulators, bridges) is gone again.
    for pair in rig:
        for pid in pair.pids().values():
            if pid is not None:
                poll(lambda pid=pid: proc_start_time(pid) is None, f"pid {pid} gone", timeout=5)
        assert not pair.pty_path.is_symlink()
    assert rig.state is not None
    assert not rig.state.dir.exists()


def test_upstream_compatible_emulator_command_gets_fixed_ports(settings: Settings) -> None:
    # Any command other than the default is driven the upstream way: fixed ports via
    # --serial-tcp-port/--web-port and GET /api/status polling.
    custom = settings.with_(emulator_argv=(sys.executable, "-m", "emulator"), emulator_is_ours=False)
    with Rig(custom, 1) as rig:
        pair = rig[0]
        assert 20000 <= pair.emulator_port < 32768  # from the allocator, not the kernel
        assert pair["emulator_url"] == f"http://127.0.0.1:{pair['emulator_port']}"
        assert pair.api.get_json("/status")["state"] != 0
        assert pair["emulator_container"] is None
        assert pair.firmware is not None
        assert pair["native_process"].pid == pair.firmware.pid


def test_relative_native_path_works_from_another_cwd(settings: Settings, tmp_path: Path) -> None:
    # Upstream W16: the firmware runs with cwd = its state dir; a relative path must still work.
    launcher = tmp_path / "bin" / "fw"
    launcher.parent.mkdir()
    launcher.write_text(f'#!/bin/sh\nexec {sys.executable} -m openevse_sim "$@"\n')
    launcher.chmod(0o755)
    env = {"HARNESS_RUN_DIR": str(settings.run_root), "NATIVE_BINARY_PATH": "bin/fw"}
    real = Settings.from_env(env, cwd=tmp_path)
    assert real.firmware_argv == (str(launcher),)
    with Rig(real.with_(mdns_interfaces=("127.0.0.1",), evse_link_timeout=10.0), 1) as rig:
        assert rig[0].api.get_json("/status")["state"] != 0
        assert Path(rig[0].run_dir / "fw").is_dir()
        assert any((rig[0].run_dir / "fw").iterdir())  # the firmware wrote its state there


def test_a_foreign_server_on_our_port_is_not_taken_for_our_firmware(tmp_path: Path) -> None:
    """The race the allocator cannot close: another run's firmware binds our port between our
    probe and our firmware's bind. Its 200 must not count as ours (wrong /config hostname)."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from harness.firmware import Firmware, PortConflict

    class Foreign(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"hostname": "evse-other-0"}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Foreign)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    fw = Firmware(
        instance="evse-mine-0",
        argv=[sys.executable, "-c", "import time; time.sleep(30)"],  # alive, never serves
        pty_path=tmp_path / "rapi.pty",
        http_port=server.server_address[1],
        hostname="evse-mine-0",
        chip_id=1,
        cwd=tmp_path / "fw",
        log_path=tmp_path / "firmware.log",
    )
    fw.start()
    try:
        with pytest.raises(PortConflict, match="evse-other-0"):
            fw.wait_http(5.0)
    finally:
        fw.stop()
        server.shutdown()
        server.server_close()


SILENT_EMULATOR = """
import argparse, socket, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

p = argparse.ArgumentParser()
p.add_argument("--serial-mode")
p.add_argument("--serial-tcp-port", type=int)
p.add_argument("--web-host")
p.add_argument("--web-port", type=int)
args = p.parse_args()

rapi = socket.socket()
rapi.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
rapi.bind(("127.0.0.1", args.serial_tcp_port))
rapi.listen()
held = []

def accept():
    while True:
        conn, _ = rapi.accept()
        held.append(conn)  # accepts RAPI, never answers: an EVSE that is mute
        print("silent emulator: RAPI client connected", file=sys.stderr, flush=True)

threading.Thread(target=accept, daemon=True).start()

class Api(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *a):
        pass

print("silent emulator up (no ready line, like upstream's)", file=sys.stderr, flush=True)
ThreadingHTTPServer(("127.0.0.1", args.web_port), Api).serve_forever()
"""


def test_evse_link_timeout_names_stage_elapsed_last_error_and_all_logs(
    settings: Settings, tmp_path: Path
) -> None:
    script = tmp_path / "silent_emulator.py"
    script.write_text(SILENT_EMULATOR)
    mute = settings.with_(
        emulator_argv=(sys.executable, str(script)), emulator_is_ours=False, evse_link_timeout=2.0
    )
    rig = Rig(mute, 1)
    t0 = time.monotonic()
    with pytest.raises(RigStartError) as info:
        rig.start()
    assert time.monotonic() - t0 < 15
    exc = info.value.errors[0]
    text = str(exc)
    assert isinstance(exc, ReadinessTimeout)
    assert exc.instance == rig[0].name
    assert "EVSE link" in text
    assert "2.0" in text  # elapsed / deadline
    assert "/status.state is 0" in text  # the last error
    assert "[firmware:" in text
    assert "Server started" in text
    assert "[bridge:" in text
    assert "starting data transfer loop" in text  # socat did connect: the EVSE is mute
    assert "[emulator:" in text
    assert "silent emulator: RAPI client connected" in text
    assert rig.state is not None
    assert not rig.state.dir.exists()


def test_without_socat_the_python_bridge_is_used_with_a_warning(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))  # a machine without socat
    assert settings.resolved_bridge() == "python"
    rig = Rig(settings, 1)
    with pytest.warns(HarnessWarning, match="socat not found"):
        rig.start()
    try:
        assert rig[0].bridge is not None
        assert rig[0].bridge.kind == "python"
        assert rig[0].api.get_json("/status")["state"] != 0
    finally:
        rig.close()


def test_a_bridge_factory_replaces_the_configured_bridge(settings: Settings, tmp_path: Path) -> None:
    """Any SerialBridge built from the same keyword arguments replaces the configured one."""
    made: list[FaultBridge] = []
    trace = tmp_path / "factory-trace.jsonl"

    def traced_bridge(**kwargs: Any) -> FaultBridge:
        made.append(FaultBridge(**kwargs, trace_path=trace))
        return made[-1]

    with Rig(settings.with_(bridge="socat"), 1, bridge_factory=traced_bridge) as rig:
        assert rig[0].bridge is made[0]
        assert rig[0].bridge.kind == "python"
        assert rig[0].api.get_json("/status")["state"] != 0
        assert '"$GV' in trace.read_text()  # the firmware's boot traffic went through our bridge
