"""Framing: both checksum kinds, no checksum, sequence ids, replies (evse.md §1)."""

from __future__ import annotations

import pytest

from emulator import rapi


@pytest.mark.parametrize(
    ("frame", "checksum"),
    # The examples given in evse.md §1.
    [
        ("$GV", 0x35),
        ("$GS", 0x30),
        ("$GG", 0x24),
        ("$GC", 0x20),
        ("$FS", 0x31),
        ("$FE", 0x27),
        ("$SC 16", 0x13),
    ],
)
def test_xor_checksum_matches_the_spec_examples(frame: str, checksum: int) -> None:
    assert rapi.xor_checksum(frame.encode()) == checksum
    cmd = rapi.parse_command(f"{frame}^{checksum:02X}".encode())
    assert cmd.checksum_kind == "xor"
    assert cmd.checksum_ok
    assert cmd.code == frame[1:3]


def test_additive_checksum() -> None:
    assert rapi.additive_checksum(b"$GV") == (0x24 + 0x47 + 0x56) & 0xFF
    assert rapi.additive_checksum(b"\xff\x02") == 0x01  # 8-bit wrap
    ok = rapi.parse_command(b"$GV*C1")
    assert ok.checksum_kind == "add"
    assert ok.checksum_ok
    bad = rapi.parse_command(b"$GV*C2")
    assert not bad.checksum_ok
    assert not bad.valid


def test_lower_case_checksum_is_accepted_on_commands() -> None:
    # The controller parses hex either way; only the firmware is strict about replies.
    assert rapi.parse_command(b"$SC 16 V^4c").checksum_ok == (rapi.xor_checksum(b"$SC 16 V") == 0x4C)


@pytest.mark.parametrize("raw", [b"$GV^3", b"$GV^355", b"$GV^ZZ", b"$GV^", b"$GV^00"])
def test_malformed_or_wrong_checksum_is_not_ok(raw: bytes) -> None:
    assert not rapi.parse_command(raw).checksum_ok


def test_no_checksum() -> None:
    cmd = rapi.parse_command(b"$SC 16 V")
    assert cmd.checksum_kind == "none"
    assert cmd.checksum_ok
    assert cmd.args == ["16", "V"]


def test_sequence_id_is_parsed_and_echoed() -> None:
    frame = rapi.command("GS", seq_id=0x1A)
    assert frame == b"$GS :1A^5A\r"
    cmd = rapi.parse_command(frame[:-1])
    assert cmd.seq_id == 0x1A
    assert cmd.args == []
    assert rapi.reply(True, ["01"], cmd.seq_id) == rapi.frame("$OK 01 :1A")


@pytest.mark.parametrize("raw", [b"$GS :ZZ", b"$GS :1FF", b"", b"$", b"$G", b"GV", b"$GVX"])
def test_unparseable_frames_have_no_code(raw: bytes) -> None:
    cmd = rapi.parse_command(raw)
    assert cmd.code == ""
    assert not cmd.valid


def test_reply_carries_an_upper_case_xor_checksum() -> None:
    out = rapi.reply(False, ["32"])
    assert out == b"$NK 32^%02X\r" % rapi.xor_checksum(b"$NK 32")
    assert rapi.reply(True) == b"$OK^20\r"
    for data in (rapi.reply(True, ["ab", "fe"]), rapi.frame("$AT fe 02 32 0100")):
        digits = data[-3:-1]
        assert digits == digits.upper()


def test_command_builder_all_kinds() -> None:
    assert rapi.command("GV") == b"$GV^35\r"
    assert rapi.command("GV", checksum="add") == b"$GV*C1\r"
    assert rapi.command("SC", "16", checksum="none") == b"$SC 16\r"


def test_frame_reader_splits_ignores_noise_and_partial_frames() -> None:
    reader = rapi.FrameReader()
    assert list(reader.feed(b"noise$GV^35\r$GS")) == [b"$GV^35"]
    assert list(reader.feed(b"^30\r")) == [b"$GS^30"]
    assert list(reader.feed(b"\n$GC^20\r\n")) == [b"$GC^20"]
    # A new "$" inside an unfinished frame restarts it.
    assert list(reader.feed(b"$G$GG^24\r")) == [b"$GG^24"]


def test_frame_reader_drops_oversized_garbage() -> None:
    reader = rapi.FrameReader()
    assert list(reader.feed(b"$" + b"x" * (rapi.MAX_FRAME + 10))) == []
    assert list(reader.feed(b"\r$GV^35\r")) == [b"$GV^35"]
