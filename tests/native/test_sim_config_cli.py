"""POST /config rules (firmware.md §4.3), command line and ids (§5.2), persistence (§1.3, §4.2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.native.conftest import LAUNCHER, Sim

MEMBER = {
    "loadsharing_enabled": True,
    "loadsharing_role": "member",
    "loadsharing_controller_host": "ctl.local",
}


@pytest.fixture
def sim(sim_factory: Callable[..., Sim]) -> Sim:
    return sim_factory("a")


# --- §4.3 ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"loadsharing_group_max_current": -1}, "loadsharing_group_max_current must be >= 0"),
        ({"loadsharing_safety_factor": 1.01}, "loadsharing_safety_factor must be between 0.0 and 1.0"),
        ({"loadsharing_safety_factor": -0.1}, "loadsharing_safety_factor must be between 0.0 and 1.0"),
        (
            {"loadsharing_heartbeat_timeout": 4},
            "loadsharing_heartbeat_timeout must be between 5 and 600 seconds",
        ),
        (
            {"loadsharing_heartbeat_timeout": 601},
            "loadsharing_heartbeat_timeout must be between 5 and 600 seconds",
        ),
        (
            {"loadsharing_failsafe_safe_current": 81},
            "loadsharing_failsafe_safe_current must be between 0 and 80 amps",
        ),
        (
            {"loadsharing_failsafe_safe_current": -1},
            "loadsharing_failsafe_safe_current must be between 0 and 80 amps",
        ),
        (
            {"loadsharing_failsafe_peer_assumed_current": 80.5},
            "loadsharing_failsafe_peer_assumed_current must be between 0 and 80 amps",
        ),
        (
            {"loadsharing_failsafe_mode": "off"},
            "loadsharing_failsafe_mode must be 'safe_current' or 'disable'",
        ),
        (
            {"loadsharing_group_max_current": 10, "loadsharing_failsafe_safe_current": 32},
            "loadsharing_failsafe_safe_current must not exceed loadsharing_group_max_current",
        ),
        (
            # Range checks come before the cross-field check, in the documented order.
            {"loadsharing_group_max_current": -5, "loadsharing_heartbeat_timeout": 1},
            "loadsharing_group_max_current must be >= 0",
        ),
    ],
)
def test_range_errors_are_400_and_change_nothing(sim: Sim, body: dict[str, object], message: str) -> None:
    before = sim.get("/config").json()
    response = sim.post("/config", body)
    assert response.status_code == 400
    assert response.json() == {"msg": message}
    assert sim.get("/config").json() == before


def test_unparseable_body(sim: Sim) -> None:
    for data in (b"", b"{", b"[1,2", b"NaN"):
        response = sim.post("/config", data=data)
        assert response.status_code == 400
        assert response.json() == {"msg": "Could not parse JSON"}


def test_success_done_then_no_change_and_version(sim: Sim) -> None:
    response = sim.post(
        "/config", {"loadsharing_group_max_current": 10, "loadsharing_failsafe_safe_current": 6}
    )
    assert response.status_code == 200
    first = response.json()
    assert list(first) == ["config_version", "msg"]
    assert first["msg"] == "done"
    again = sim.post("/config", {"loadsharing_group_max_current": 10})
    assert again.json() == {"config_version": first["config_version"], "msg": "no change"}
    # Cross-field check uses the stored group max when the body has only the failsafe (§4.3).
    rejected = sim.post("/config", {"loadsharing_failsafe_safe_current": 12})
    assert rejected.status_code == 400
    assert rejected.json() == {
        "msg": "loadsharing_failsafe_safe_current must not exceed loadsharing_group_max_current"
    }
    assert sim.get("/status").json()["config_version"] == first["config_version"]


def test_member_lockout_and_push_signature_bypass(sim: Sim) -> None:
    assert sim.post("/config", MEMBER).json()["msg"] == "done"
    locked = sim.post("/config", {"loadsharing_group_max_current": 40})
    assert locked.status_code == 403
    assert locked.json() == {"msg": "Load sharing configuration is read-only on members"}
    # Non-loadsharing keys are still accepted.
    assert sim.post("/config", {"vehicle_data_src": 3}).status_code == 200
    # The controller-push signature (role member or "") bypasses the lock.
    assert (
        sim.post("/config", {"loadsharing_role": "member", "loadsharing_group_max_current": 40}).status_code
        == 200
    )
    # Validation still applies after the lockout check.
    bad = sim.post("/config", {"loadsharing_role": "member", "loadsharing_heartbeat_timeout": 1})
    assert bad.status_code == 400


def test_leaving_member_role_unjoins_controller_entry(sim: Sim) -> None:
    assert sim.post("/loadsharing/peers", {"host": "ctl.local", "reciprocal": False}).status_code == 200
    assert sim.post("/config", MEMBER).status_code == 200
    reset = {"loadsharing_enabled": False, "loadsharing_role": "", "loadsharing_controller_host": ""}
    response = sim.post("/config", reset)
    assert response.status_code == 200
    row = next(r for r in sim.peers() if r["host"] == "ctl.local")
    assert row["joined"] is False
    config = sim.get("/config").json()
    assert config["loadsharing_role"] == ""
    assert config["loadsharing_controller_host"] == ""


def test_config_other_methods_405(sim: Sim) -> None:
    import requests

    for method in ("PUT", "DELETE", "PATCH"):
        response = requests.request(method, sim.base + "/config", timeout=5)
        assert response.status_code == 405
        assert response.json() == {"msg": "Method not allowed"}


def test_get_config_fields(sim: Sim) -> None:
    doc = sim.get("/config").json()
    assert doc["hostname"] == sim.hostname
    assert doc["www_http_port"] == sim.port
    assert doc["wifi_serial"] == sim.long_id.upper()
    assert doc["buildenv"] == "native_openevse"
    assert doc["loadsharing_heartbeat_timeout"] == 30
    assert doc["loadsharing_failsafe_mode"] == "safe_current"


# --- persistence ------------------------------------------------------------------------------


def test_config_and_joined_peers_survive_restart(sim: Sim) -> None:
    assert (
        sim.post("/loadsharing/peers", {"host": "keep.example:8001", "reciprocal": False}).status_code == 200
    )
    assert (
        sim.post("/config", {"loadsharing_group_id": "persisted", "loadsharing_priority": 3}).status_code
        == 200
    )
    sim.stop()
    assert sim.proc is not None
    assert sim.proc.returncode is not None
    assert (sim.cwd / "epoxyeepromdata").exists()
    sim.start()
    config = sim.get("/config").json()
    assert config["loadsharing_group_id"] == "persisted"
    assert config["loadsharing_priority"] == 3
    row = next(r for r in sim.peers() if r["host"] == "keep.example:8001")
    assert row["joined"] is True


def test_cli_override_not_committed_until_a_post(sim_factory: Callable[..., Sim]) -> None:
    sim = sim_factory("a", extra=["--set-config", "loadsharing_group_id=fromcli"], start=False)
    sim.start()
    assert sim.get("/config").json()["loadsharing_group_id"] == "fromcli"
    sim.stop()
    sim.extra = []
    sim.start()
    assert sim.get("/config").json()["loadsharing_group_id"] == ""  # --set-config is memory only
    sim.stop()
    sim.extra = ["--set-config", "loadsharing_group_id=fromcli"]
    sim.start()
    assert sim.post("/config", {"loadsharing_priority": 1}).status_code == 200  # commits everything
    sim.stop()
    sim.extra = []
    sim.start()
    assert sim.get("/config").json()["loadsharing_group_id"] == "fromcli"


def test_storage_env_vars(sim_factory: Callable[..., Sim], tmp_path: Path) -> None:
    eeprom, fs_root = tmp_path / "elsewhere" / "eeprom.img", tmp_path / "fsroot"
    eeprom.parent.mkdir()
    sim = sim_factory("a", env={"EPOXY_EEPROM_DATA": str(eeprom), "EPOXY_FS_ROOT": str(fs_root)})
    assert sim.post("/loadsharing/peers", {"host": "x.example:1", "reciprocal": False}).status_code == 200
    assert sim.post("/config", {"loadsharing_group_id": "g"}).status_code == 200
    assert eeprom.exists()
    assert json.loads((fs_root / "loadsharing_peers.json").read_text())["peers"][0]["host"] == "x.example:1"
    assert not (sim.cwd / "epoxyeepromdata").exists()


# --- §5.2 command line ------------------------------------------------------------------------


def run_cli(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = os.environ.copy()
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, str(LAUNCHER), *args],
        cwd=tmp_path,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_exits_0_with_usage_on_stderr(tmp_path: Path, flag: str) -> None:
    result = run_cli(tmp_path, flag)
    assert result.returncode == 0
    assert "Usage:" in result.stderr
    assert "--rapi-serial" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--bogus"], "Unknown flag '--bogus'"),
        (["--rapi-serial"], "Missing value for --rapi-serial"),
        (["--rapi"], "Missing value for --rapi"),
        (["--set-config"], "Missing value for --set-config"),
        (["--set-config", "novalue"], "expected NAME=VALUE"),
        (["--set-config", "=value"], "expected NAME=VALUE"),
        (["--set-config", "x" * 64 + "=1"], "expected NAME=VALUE"),
    ],
)
def test_cli_errors_exit_1(tmp_path: Path, args: list[str], needle: str) -> None:
    result = run_cli(tmp_path, *args)
    assert result.returncode == 1
    assert needle in result.stderr
    assert "Server started" not in result.stdout


def test_rapi_serial_port_env_is_the_default_path(tmp_path: Path) -> None:
    from tests.native.conftest import free_port, poll, stop_process

    port = free_port()
    env = os.environ.copy()
    env["RAPI_SERIAL_PORT"] = str(tmp_path / "from-env-pty")
    err = tmp_path / "err.log"
    with (tmp_path / "out.log").open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(LAUNCHER), "--set-config", f"www_http_port={port}"],
            cwd=tmp_path,
            env=env,
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
        )
    try:
        text = poll(lambda: "Failed to open PTY port" in err.read_text() and err.read_text(), 15, "PTY error")
        assert str(tmp_path / "from-env-pty") in text
        assert "Set RAPI serial path" not in text  # only the flag prints that (§5.2)
    finally:
        stop_process(proc)


def test_unknown_flag_is_reported_after_config_load(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "--set-config", "loadsharing_priority=2", "--bogus")
    assert result.returncode == 1
    assert result.stderr.index("Set config: loadsharing_priority = 2") < result.stderr.index("Unknown flag")


def test_set_config_messages_and_typing(sim_factory: Callable[..., Sim]) -> None:
    sim = sim_factory(
        "a",
        extra=[
            "--set-config",
            "loadsharing_enabled=true",
            "--set-config",
            "loadsharing_safety_factor=0.5",
            "--set-config",
            "loadsharing_priority=7",
            "--set-config",
            "no_such_key=1",
            "--set-config",
            "loadsharing_role=",
        ],
    )
    err = sim.stderr.read_text()
    assert f"Set RAPI serial path: {sim.rapi}" in err
    assert "Set config: loadsharing_enabled = true" in err
    assert "Set config: loadsharing_safety_factor = 0.5" in err
    assert "Config option 'no_such_key' not applied (unknown key or value unchanged)" in err
    assert "Config option 'loadsharing_role' not applied (unknown key or value unchanged)" in err
    config = sim.get("/config").json()
    assert config["loadsharing_enabled"] is True
    assert config["loadsharing_safety_factor"] == 0.5
    assert config["loadsharing_priority"] == 7


@pytest.mark.parametrize(
    ("chip", "long_id", "short_id"),
    [("0x1234567890ABCDEF", "efcdab907856", "7856"), ("FEDCBA0987654321", "2143658709ba", "09ba")],
)
def test_chip_id_derivation(tmp_path: Path, chip: str, long_id: str, short_id: str) -> None:
    """§5.2: long id, short id, default hostname, wifi_serial, local peer id, banner."""
    from tests.native.conftest import free_port, poll, stop_process

    port = free_port()
    env = os.environ.copy()
    env["OPENEVSE_CHIP_ID"] = chip
    out, err = tmp_path / "out.log", tmp_path / "err.log"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(LAUNCHER),
                "--rapi",
                str(tmp_path / "none"),
                "--set-config",
                f"www_http_port={port}",
            ],
            cwd=tmp_path,
            env=env,
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
        )
    try:
        import requests

        config = poll(
            lambda: requests.get(f"http://127.0.0.1:{port}/config", timeout=2).json(), 15, "/config"
        )
        assert config["wifi_serial"] == long_id.upper()
        assert config["hostname"] == f"openevse-{short_id}"
        local = requests.get(f"http://127.0.0.1:{port}/loadsharing/peers", timeout=2).json()[0]
        assert local["id"] == long_id
        assert local["host"] == f"openevse-{short_id}.local"
        lines = out.read_text().splitlines()
        assert lines[0] == f"OpenEVSE WiFI {short_id}"
        assert "AP IP Address: 192.168.4.1" in lines
        assert f"Starting HTTP server, http://127.0.0.1:{port}" in lines
        assert lines.index("Server started") > lines.index(f"Starting HTTP server, http://127.0.0.1:{port}")
        assert "Failed to open PTY port:" in err.read_text()
    finally:
        stop_process(proc)
    assert proc.returncode == 0  # SIGTERM: orderly exit


def test_sigterm_stops_promptly(sim: Sim) -> None:
    import signal
    import time

    assert sim.proc is not None
    begin = time.monotonic()
    sim.proc.send_signal(signal.SIGTERM)
    sim.proc.wait(5)
    assert time.monotonic() - begin < 1.0


# --- §5.4 STA mode, auth (§1.1), serial console (§4.2) -----------------------------------------


def test_sta_mode_banner_404_and_basic_auth(sim_factory: Callable[..., Sim]) -> None:
    import requests

    sim = sim_factory(
        "a",
        extra=[
            "--set-config",
            "ssid=EPX_OK",
            "--set-config",
            "www_username=admin",
            "--set-config",
            "www_password=pw",
        ],
    )
    assert "Connected, IP: 127.0.0.1" in sim.stdout.read_text().splitlines()
    denied = requests.get(sim.base + "/loadsharing/peers", timeout=5)
    assert denied.status_code == 401
    assert denied.headers["WWW-Authenticate"] == f'Basic realm="{sim.hostname}"'
    wrong = requests.get(sim.base + "/status", auth=("admin", "nope"), timeout=5)
    assert wrong.status_code == 401
    rows = requests.get(sim.base + "/loadsharing/peers", auth=("admin", "pw"), timeout=5).json()
    assert rows[0]["ip"] == "127.0.0.1"
    unknown = requests.get(sim.base + "/no/such/page", auth=("admin", "pw"), timeout=5, allow_redirects=False)
    assert unknown.status_code == 404
    assert unknown.json() == {"msg": "Not found"}
    assert requests.get(sim.base + "/config", auth=("admin", "pw"), timeout=5).json()["www_password"] == (
        "_DUMMY_PASSWORD"
    )


def test_serial_console_config_lines(tmp_path: Path) -> None:
    from tests.native.conftest import free_port, poll, stop_process

    port = free_port()
    out = tmp_path / "out.log"
    with out.open("wb") as stdout, (tmp_path / "err.log").open("wb") as stderr:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(LAUNCHER),
                "--rapi",
                str(tmp_path / "none"),
                "--set-config",
                f"www_http_port={port}",
            ],
            cwd=tmp_path,
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.PIPE,
        )
    try:
        assert proc.stdin is not None
        poll(lambda: "Server started" in out.read_text(), 15, "Server started")
        proc.stdin.write(b'config: {"loadsharing_priority": 4}\n')
        proc.stdin.write(b'config: {"loadsharing_priority": 4}\n')
        proc.stdin.write(b"config: {nope\n")
        proc.stdin.write(b'factory: {"loadsharing_heartbeat_timeout": 1}\n')
        proc.stdin.flush()
        expected = [
            '{"code":200,"msg":"done"}',
            '{"code":200,"msg":"no change"}',
            '{"code":400,"msg":"Could not parse JSON"}',
            '{"code":400,"msg":"loadsharing_heartbeat_timeout must be between 5 and 600 seconds"}',
        ]
        poll(
            lambda: [ln for ln in out.read_text().splitlines() if ln.startswith('{"code"')] == expected,
            10,
            "replies",
        )
        import requests

        assert requests.get(f"http://127.0.0.1:{port}/config", timeout=5).json()["loadsharing_priority"] == 4
    finally:
        stop_process(proc)


def test_reset_wipes_config_and_peers_but_keeps_running(sim: Sim) -> None:
    import requests

    assert sim.post("/loadsharing/peers", {"host": "gone.example:1", "reciprocal": False}).status_code == 200
    assert sim.post("/config", {"loadsharing_group_id": "before"}).status_code == 200
    response = requests.get(sim.base + "/reset", timeout=5)
    assert (response.status_code, response.text) == (200, "1")
    config = sim.get("/config").json()
    assert config["loadsharing_group_id"] == ""
    # Defaults again, CLI overrides included: the hostname falls back to openevse-<short id>.
    assert config["hostname"] == f"openevse-{sim.long_id[-4:]}"
    assert [r["host"] for r in sim.peers() if r["joined"]] == [f"openevse-{sim.long_id[-4:]}.local"]
    assert not (sim.cwd / "epoxyeepromdata").exists()
    assert list((sim.cwd / "epoxyfsdata").iterdir()) == []
    assert sim.alive()


@pytest.mark.parametrize(
    ("body", "status", "reply"),
    [
        ({"device": "gateway"}, 200, {"msg": "restart gateway"}),
        ({"device": "evse"}, 200, {"msg": "restart evse"}),
        ({"device": "toaster"}, 404, {"msg": "unknown device"}),
        ({}, 400, {"msg": "wrong payload"}),
    ],
)
def test_restart_post(sim: Sim, body: dict[str, str], status: int, reply: dict[str, str]) -> None:
    response = sim.post("/restart", body)
    assert response.status_code == status
    assert response.json() == reply
    assert sim.alive()


def test_restart_get_bad_json_and_405(sim: Sim) -> None:
    import requests

    response = requests.get(sim.base + "/restart", timeout=5)
    assert (response.status_code, response.text) == (200, "1")
    bad = sim.post("/restart", data=b"{")
    assert (bad.status_code, bad.json()) == (400, {"msg": "Couldn't parse json"})
    other = requests.delete(sim.base + "/restart", timeout=5)
    assert (other.status_code, other.json()) == (405, {"msg": "Method not allowed"})
