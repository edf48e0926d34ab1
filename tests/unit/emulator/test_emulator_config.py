"""Flags over upstream env names (docs/architecture.md, evse.md §6)."""

from __future__ import annotations

from pathlib import Path

import pytest

from emulator import config


def test_defaults() -> None:
    cfg = config.parse([], {})
    assert cfg == config.Config()
    assert cfg.rapi_host == "127.0.0.1"
    assert cfg.web_host == "127.0.0.1"
    assert cfg.tick_ms <= 100


def test_upstream_env_names() -> None:
    env = {
        "SERIAL_MODE": "pty",
        "SERIAL_TCP_PORT": "0",
        "SERIAL_PTY_PATH": "/tmp/x/rapi",
        "WEB_HOST": "192.0.2.1",
        "WEB_PORT": "9000",
        "RAPI_HOST": "192.0.2.1",
    }
    cfg = config.parse([], env)
    assert cfg.serial_mode == "pty"
    assert cfg.rapi_port == 0
    assert cfg.pty_path == Path("/tmp/x/rapi")
    assert (cfg.web_host, cfg.web_port, cfg.rapi_host) == ("192.0.2.1", 9000, "192.0.2.1")


def test_flags_beat_env() -> None:
    cfg = config.parse(
        ["--serial-tcp-port", "1234", "--web-port", "0", "--tick-ms", "50", "--mcu-id", "ABCDEF0001"],
        {"SERIAL_TCP_PORT": "999", "WEB_PORT": "1"},
    )
    assert (cfg.rapi_port, cfg.web_port, cfg.tick_ms, cfg.mcu_id) == (1234, 0, 50, "ABCDEF0001")


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["--web-port", "70000"], {}),
        (["--web-port", "x"], {}),
        ([], {"SERIAL_TCP_PORT": "-1"}),
        ([], {"SERIAL_MODE": "usb"}),
        (["--serial-mode", "usb"], {}),
        (["--tick-ms", "0"], {}),
        (["--mcu-id", "has space"], {}),
        ([], {"EMULATOR_MCU_ID": "x" * 20}),
        (["--protocol-version", "5 2"], {}),
    ],
)
def test_bad_values_exit_2_with_a_message(
    argv: list[str], env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        config.parse(argv, env)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err
