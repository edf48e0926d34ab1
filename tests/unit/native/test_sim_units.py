"""Unit tests of the stand-in's pure pieces: ids (firmware.md §5.2), CLI typing (§4.2),
§4.3 validation, RAPI framing (§6.1), percent-decoding (§1.4), §2.4 reconciliation."""

from __future__ import annotations

import io
import socket
from pathlib import Path

import pytest
from openevse_sim import cli
from openevse_sim.config import Config, ConfigError, type_cli_value
from openevse_sim.discovery import Discovery, Result, _results, _txt
from openevse_sim.http_api import PercentError, percent_decode
from openevse_sim.identity import identity_from_chip_id, parse_chip_id
from openevse_sim.peers import PeerGroup
from openevse_sim.rapi import checksum, encode, is_async, parse_frame

# --- identity ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "long_id", "short_id"),
    [
        ("0x1234567890ABCDEF", "efcdab907856", "7856"),
        ("0xFEDCBA0987654321", "2143658709ba", "09ba"),
        ("FEDCBA0987654321", "2143658709ba", "09ba"),
        ("0x0000000000000102", "20100000000", "0000"),
    ],
)
def test_ids(text: str, long_id: str, short_id: str) -> None:
    chip = parse_chip_id(text)
    assert chip is not None
    ident = identity_from_chip_id(chip)
    assert ident.long_id == long_id
    assert ident.short_id == short_id
    assert ident.wifi_serial == long_id.upper()
    assert ident.default_hostname == f"openevse-{short_id}"


def test_leading_byte_is_not_zero_padded() -> None:
    assert identity_from_chip_id(0x0000_0A0B_0C0D_0E05).long_id == "50e0d0c0b0a"


@pytest.mark.parametrize("text", ["", "0x", "zz", "0x12345678901234567"])
def test_bad_chip_ids(text: str) -> None:
    assert parse_chip_id(text) is None


# --- CLI ----------------------------------------------------------------------------------------


def test_parse_args_collects_everything() -> None:
    err = io.StringIO()
    opts = cli.parse_args(
        ["--rapi", "/dev/x", "--set-config", "a=1", "--set-config", "b==2", "--", "--bogus"], env={}, err=err
    )
    assert opts.rapi_path == "/dev/x"
    assert opts.set_config == [("a", "1"), ("b", "=2")]
    assert opts.args == ["--bogus"]
    assert opts.unknown_flag is None
    assert "Set RAPI serial path: /dev/x" in err.getvalue()


def test_rapi_path_from_env_then_default() -> None:
    assert cli.parse_args([], env={"RAPI_SERIAL_PORT": "/p"}, err=io.StringIO()).rapi_path == "/p"
    assert cli.parse_args([], env={}, err=io.StringIO()).rapi_path == "/tmp/rapi_pty"


def test_first_non_flag_stops_parsing() -> None:
    opts = cli.parse_args(["positional", "--bogus"], env={}, err=io.StringIO())
    assert opts.unknown_flag is None
    assert opts.args == ["positional", "--bogus"]


def test_help_and_errors_raise_with_codes() -> None:
    with pytest.raises(cli.CliExit) as info:
        cli.parse_args(["-h"], env={}, err=io.StringIO())
    assert info.value.code == 0
    with pytest.raises(cli.CliExit) as info:
        cli.parse_args(["--set-config", "x"], env={}, err=io.StringIO())
    assert info.value.code == 1


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("true", True),
        ("false", False),
        ("42", 42),
        ("-7", -7),
        ("0.5", 0.5),
        ("1.", 1.0),
        ("1e5", "1e5"),  # no '.', not an integer: a string
        ("True", "True"),
        ("1.2.3", "1.2.3"),
        ("", ""),
        ("٣", "٣"),  # non-ASCII digits are not a base-10 integer
    ],
)
def test_cli_value_typing(text: str, value: object) -> None:
    typed = type_cli_value(text)
    assert typed == value
    assert type(typed) is type(value)


# --- config -----------------------------------------------------------------------------------


def test_config_post_rejects_in_documented_order(tmp_path: Path) -> None:
    config = Config(tmp_path / "eeprom", "openevse-7856")
    with pytest.raises(ConfigError) as info:
        config.post({"loadsharing_failsafe_mode": "x", "loadsharing_safety_factor": 2})
    assert info.value.msg == "loadsharing_safety_factor must be between 0.0 and 1.0"
    with pytest.raises(ConfigError) as info:
        config.post([1])
    assert (info.value.status, info.value.msg) == (400, "Could not parse JSON")
    assert not (tmp_path / "eeprom").exists()  # nothing committed
    result = config.post({"loadsharing_group_max_current": 10})
    assert result.changed
    assert (tmp_path / "eeprom").exists()
    assert Config(tmp_path / "eeprom", "x").float_("loadsharing_group_max_current") == 10.0


def test_non_numbers_validate_as_zero(tmp_path: Path) -> None:
    """ArduinoJson reads a string as 0, so a string heartbeat is out of range (§4.3)."""
    config = Config(tmp_path / "eeprom", "h")
    with pytest.raises(ConfigError) as info:
        config.post({"loadsharing_heartbeat_timeout": "30"})
    assert info.value.msg == "loadsharing_heartbeat_timeout must be between 5 and 600 seconds"


def test_cli_apply_reports_unchanged(tmp_path: Path) -> None:
    config = Config(tmp_path / "eeprom", "h")
    assert config.apply_cli("loadsharing_priority", "3")
    assert not config.apply_cli("loadsharing_priority", "3")
    assert not config.apply_cli("nope", "3")
    assert not config.apply_cli("loadsharing_priority", "abc")


# --- RAPI -------------------------------------------------------------------------------------


def test_rapi_framing() -> None:
    assert encode("$GV") == b"$GV^35\r"
    assert checksum("$SC 16") == "13"
    assert parse_frame("$OK 8.2.2 5.2.1") == ["$OK", "8.2.2", "5.2.1"]
    good = "$OK 1 2"
    assert parse_frame(f"{good}^{checksum(good)}") == ["$OK", "1", "2"]
    assert parse_frame(f"{good}^{checksum(good).lower()}x") is None
    assert is_async(["$AT", "01", "01", "32", "0000"])
    assert is_async(["$WF", "1"])
    assert not is_async(["$OK"])


def test_lower_case_checksum_is_rejected() -> None:
    body = next(b for b in (f"$OK {n}" for n in range(100)) if any(c.isalpha() for c in checksum(b)))
    assert parse_frame(f"{body}^{checksum(body).lower()}") is None


# --- percent-decoding -------------------------------------------------------------------------


def test_percent_decode() -> None:
    assert percent_decode("localhost%3A8001") == "localhost:8001"
    assert percent_decode("a+b") == "a+b"
    assert percent_decode("%41%62") == "Ab"
    for bad in ("%", "%4", "%zz", "%+1", "% 1", "%4g"):
        with pytest.raises(PercentError):
            percent_decode(bad)


# --- discovery: TXT, record join, §2.4 reconciliation ----------------------------------------


def test_txt_parsing_strips_quotes() -> None:
    raw = b'\x0dtype="native"' + b"\x06id=abc" + b"\x05ssl=0" + b"\x00"
    assert _txt(raw) == {"type": "native", "id": "abc", "ssl": "0"}


def test_results_join_ptr_srv_txt_a() -> None:
    from zeroconf._dns import DNSAddress, DNSPointer, DNSService, DNSText

    svc = "_openevse._tcp.local."
    name = f"unit-x.{svc}"
    records = [
        DNSPointer(svc, 12, 1, 120, name),
        DNSService(name, 33, 1, 120, 0, 0, 8001, "unit-x.local."),
        DNSText(name, 16, 1, 120, b"\x06id=abc"),
        DNSAddress("unit-x.local.", 1, 1, 120, socket.inet_aton("127.0.0.1")),
    ]
    results = _results(records)
    assert list(results.values()) == [Result("unit-x", "127.0.0.1", "unit-x.local", 8001, {"id": "abc"})]


class _Cfg:
    hostname = "me"


class _Ident:
    long_id = "aaaaaaaaaaaa"


def _discovery(tmp_path: Path) -> tuple[Discovery, PeerGroup]:
    peers = PeerGroup(tmp_path, lambda: 30.0)
    disc = Discovery(_Cfg(), _Ident(), peers, ["127.0.0.1"], {})  # type: ignore[arg-type]
    return disc, peers


def test_reconcile_adds_then_renames_with_port(tmp_path: Path) -> None:
    disc, peers = _discovery(tmp_path)
    result = Result("other", "127.0.0.1", "other.local", 8001, {"id": "bbbbbbbbbbbb", "ssl": "0"})
    disc.reconcile([result])
    (peer,) = peers.entries
    assert (peer.host, peer.id, peer.name) == ("other.local", "bbbbbbbbbbbb", "other")
    assert (peer.url, peer.ip, peer.joined, peer.mdns_online) == (
        "http://127.0.0.1:8001",
        "127.0.0.1",
        False,
        True,
    )
    disc.reconcile([result])
    assert peer.host == "other.local:8001"  # second sweep adds the port (§2.4)
    disc.reconcile([])
    assert peer.mdns_online is False


def test_reconcile_renames_manual_entry_by_id_and_persists(tmp_path: Path) -> None:
    disc, peers = _discovery(tmp_path)
    manual = peers.join("localhost:8001")
    manual.id = "bbbbbbbbbbbb"
    disc.reconcile([Result("other", "127.0.0.1", "other.local", 8001, {"id": "bbbbbbbbbbbb"})])
    assert [p.host for p in peers.entries] == ["other.local:8001"]
    assert manual.joined
    assert "other.local:8001" in (tmp_path / "loadsharing_peers.json").read_text()


def test_reconcile_https_default_port(tmp_path: Path) -> None:
    disc, peers = _discovery(tmp_path)
    disc.reconcile([Result("s", "10.0.0.2", "s.local", 443, {"id": "c", "ssl": "1"})])
    assert peers.entries[0].url == "https://10.0.0.2"
    disc.reconcile([Result("s", "10.0.0.2", "s.local", 443, {"id": "c", "ssl": "1"})])
    assert peers.entries[0].host == "s.local"


# --- hostile peer data ------------------------------------------------------------------------


def test_peer_json_is_strict() -> None:
    from openevse_sim.poller import loads_strict

    assert loads_strict('{"amp": 1.5}') == {"amp": 1.5}
    for text in ('{"amp": NaN}', '{"amp": Infinity}', '{"amp": 1e400}'):
        with pytest.raises(ValueError):
            loads_strict(text)


def test_group_current_total_ignores_non_numbers() -> None:
    from openevse_sim.status import _milliamps

    assert [_milliamps(v) for v in (1500, 2.5, "7", None, True, {"a": 1}, float("inf"))] == [
        1500,
        2,
        0,
        0,
        0,
        0,
        0,
    ]
