"""Settings: one place for every knob; bad firmware paths are reported before anything starts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from harness.errors import PrerequisiteMissing
from harness.settings import STAND_IN_ARGV, Settings, check_firmware_runs, xdist_worker_index


def _script(path: Path, body: str, mode: int = 0o755) -> Path:
    path.write_text(f"#!{sys.executable}\n{body}\n")
    path.chmod(mode)
    return path


def test_defaults_are_the_stand_in_and_our_emulator(tmp_path: Path) -> None:
    s = Settings.from_env({"HARNESS_RUN_DIR": str(tmp_path)}, cwd=tmp_path)
    assert s.is_stand_in
    assert s.firmware_argv == STAND_IN_ARGV
    assert s.emulator_backend == "process"
    assert s.emulator_is_ours
    assert s.mdns_interfaces == ("127.0.0.1",)
    assert s.evse_link_timeout >= 20.0  # covers one 10 s $GV retry (firmware.md §6.2)
    assert "STAND-IN" in s.firmware_description()
    assert s.run_root == tmp_path
    # Port locks are shared by runs with different run dirs, so they live elsewhere.
    assert tmp_path not in s.port_lock_dir.parents
    assert Settings.from_env({"HARNESS_PORT_LOCK_DIR": str(tmp_path / "locks")}).port_lock_dir == (
        tmp_path / "locks"
    )


def test_relative_native_path_is_resolved_against_the_callers_dir(tmp_path: Path) -> None:
    (tmp_path / "build").mkdir()
    prog = _script(tmp_path / "build" / "program", "import sys; sys.exit(0)")
    s = Settings.from_env({"NATIVE_BINARY_PATH": "./build/program"}, cwd=tmp_path)
    assert s.firmware_argv == (str(prog),)
    assert not s.is_stand_in
    assert s.mdns_interfaces is None  # a real build uses Avahi; nothing forced
    assert s.evse_link_timeout >= 15.0  # firmware.md §5.4
    assert "sha256" in s.firmware_description()


def test_option_wins_over_environment(tmp_path: Path) -> None:
    prog = _script(tmp_path / "fw", "pass")
    s = Settings.from_env({"NATIVE_BINARY_PATH": "/nonexistent"}, cwd=tmp_path, native=str(prog))
    assert s.firmware_path == prog


def test_missing_binary_is_a_prerequisite_error(tmp_path: Path) -> None:
    with pytest.raises(PrerequisiteMissing, match="does not exist"):
        Settings.from_env({"NATIVE_BINARY_PATH": "nope/program"}, cwd=tmp_path)


def test_not_executable_is_a_prerequisite_error(tmp_path: Path) -> None:
    _script(tmp_path / "program", "pass", mode=0o644)
    with pytest.raises(PrerequisiteMissing, match="not an executable"):
        Settings.from_env({"NATIVE_BINARY_PATH": "program"}, cwd=tmp_path)


def test_not_runnable_is_a_prerequisite_error(tmp_path: Path) -> None:
    prog = _script(
        tmp_path / "broken", "import sys; print('libavahi missing', file=sys.stderr); sys.exit(127)"
    )
    with pytest.raises(PrerequisiteMissing, match="libavahi missing"):
        check_firmware_runs((str(prog),), stand_in=False)


def test_emulator_command_and_bridge_and_mdns(tmp_path: Path) -> None:
    env = {
        "HARNESS_EMULATOR_CMD": "node '/opt/emu dir/index.js' --flag",
        "HARNESS_BRIDGE": "python",
        "HARNESS_MDNS_INTERFACES": "10.0.0.1, 10.0.0.2",
        "PYTEST_XDIST_WORKER": "gw3",
        "CI": "true",
    }
    s = Settings.from_env(env, cwd=tmp_path)
    assert s.emulator_argv == ("node", "/opt/emu dir/index.js", "--flag")
    assert not s.emulator_is_ours
    assert s.resolved_bridge() == "python"
    assert s.mdns_interfaces == ("10.0.0.1", "10.0.0.2")
    assert s.worker_index == 3
    assert s.ci


def test_unknown_backend_or_bridge_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(PrerequisiteMissing):
        Settings.from_env({"HARNESS_EMULATOR": "vm"}, cwd=tmp_path)
    with pytest.raises(PrerequisiteMissing):
        Settings.from_env({"HARNESS_BRIDGE": "serial"}, cwd=tmp_path)


def test_xdist_worker_index() -> None:
    assert xdist_worker_index({}) == 0
    assert xdist_worker_index({"PYTEST_XDIST_WORKER": "gw12"}) == 12
    assert xdist_worker_index({"PYTEST_XDIST_WORKER": "master"}) == 0
