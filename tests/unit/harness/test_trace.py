"""harness.trace: frame parsing and checksums (evse.md §1), the JSON-lines writer and reader,
and the socat ``-x`` dump parser (format measured on socat 1.7.4.4)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from harness.trace import (
    EVSE_TO_FW,
    FW_TO_EVSE,
    FrameSplitter,
    ReplyMatcher,
    SocatDumpParser,
    SocatDumpTracer,
    TraceWriter,
    checksum_ok,
    corrupt_checksum,
    format_entry,
    frame_command,
    frames,
    read_trace,
    reply_gaps,
    socat_micro_in_nine,
    tail_text,
)


@pytest.mark.parametrize(
    ("raw", "command"),
    [
        (b"$GV^35\r", "GV"),
        (b"$OK 8.2.2 5.2.1^2E\r", "OK"),
        (b"junk$AT 02 02 32 0100^31\r", "AT"),
        (b"\r", ""),
    ],
)
def test_frame_command_is_the_two_letters_after_dollar(raw: bytes, command: str) -> None:
    assert frame_command(raw) == command


@pytest.mark.parametrize(
    "raw",
    # evse.md §1 examples, a reply, an async frame, the legacy additive form, no checksum
    [b"$GV^35\r", b"$GS^30\r", b"$SC 16^13\r", b"$OK 8.2.2 5.2.1^2E\r", b"$AT 02 02 32 0100^31\r", b"$GV\r"],
)
def test_good_checksums(raw: bytes) -> None:
    assert checksum_ok(raw, upper_only=True)


def test_additive_legacy_checksum() -> None:
    body = b"$GV"
    assert checksum_ok(body + f"*{sum(body) & 0xFF:02X}\r".encode())
    assert not checksum_ok(body + f"*{(sum(body) + 1) & 0xFF:02X}\r".encode())


@pytest.mark.parametrize("raw", [b"$GV^34\r", b"$GV^3\r", b"$GV^ZZ\r", b"$SC 17^13\r"])
def test_bad_checksums(raw: bytes) -> None:
    assert not checksum_ok(raw)


def test_lower_case_hex_is_bad_only_towards_the_firmware() -> None:
    raw = b"$SC 16^13\r"
    lower = b"$OK 8.2.2 5.2.1^2e\r"
    assert checksum_ok(lower)  # the controller accepts either case (emulator README)
    assert not checksum_ok(lower, upper_only=True)  # the firmware does not (firmware.md §6.1)
    assert checksum_ok(raw, upper_only=True)


@pytest.mark.parametrize("raw", [b"$GV^35\r", b"$OK 8.2.2 5.2.1^2E\r", b"$GV\r", b"$AT 01 01 32 0000^0D"])
def test_corrupt_checksum_is_well_formed_and_wrong(raw: bytes) -> None:
    bad = corrupt_checksum(raw)
    assert bad.endswith(b"\r") == raw.endswith(b"\r")
    assert frame_command(bad) == frame_command(raw)
    assert not checksum_ok(bad)
    given = bad.rstrip(b"\r").rsplit(b"^", 1)[1]
    assert given == given.upper()
    assert len(given) == 2


def test_splitter_keeps_partial_frames_and_cuts_runaways() -> None:
    s = FrameSplitter(limit=8)
    assert s.feed(b"$GV^3") == []
    assert s.feed(b"5\r$GS") == [b"$GV^35\r"]
    assert s.pending() == b"$GS"
    assert s.feed(b"^30\r$OK\r") == [b"$GS^30\r", b"$OK\r"]
    assert s.feed(b"0123456789") == [b"0123456789"]


def test_writer_pairs_replies_with_commands_and_reader_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    w = TraceWriter(path)
    w.frame(FW_TO_EVSE, b"$GS^30\r", t=10.0)
    w.frame(EVSE_TO_FW, b"$AT 02 02 32 0100^31\r", t=10.1)  # async: not a reply
    w.frame(EVSE_TO_FW, b"$OK 02 5 02 0100^2B\r", t=10.7)
    w.frame(EVSE_TO_FW, b"$OK^20\r", t=10.8, fault="dropped")  # nothing outstanding
    w.event("tcp-closed", why="test")
    w.close()
    entries = read_trace(path)
    assert [e.get("command") for e in entries] == ["GS", "AT", "OK", "OK", None]
    reply = entries[2]
    assert reply["reply_to"] == "GS"
    assert reply["cmd_t"] == 10.0
    assert "reply_to" not in entries[1]
    assert "reply_to" not in entries[3]
    ((command, gap),) = reply_gaps(entries)
    assert command == "GS"
    assert gap == pytest.approx(0.7)
    assert len(frames(entries, direction=EVSE_TO_FW, delivered=True)) == 2
    assert entries[3]["fault"] == "dropped"
    assert entries[4]["event"] == "tcp-closed"
    text = tail_text(path, 3)
    assert "fault=dropped" in text
    assert "tcp-closed" in text
    assert "reply_to=GS +700ms" in format_entry(reply)


def test_reader_normalizes_the_emulator_trace_and_skips_torn_lines(tmp_path: Path) -> None:
    path = tmp_path / "emu.jsonl"
    lines = [
        {"t": 1.0, "dir": "rx", "raw": "$GV^35", "command": "GV", "checksum_ok": True},
        {"t": 1.1, "dir": "tx", "raw": "$OK 8.2.2 5.2.1^2E", "command": "GV", "checksum_ok": True},
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"t": 1.2, "dir"')
    entries = read_trace(path)
    assert [e["dir"] for e in entries] == [FW_TO_EVSE, EVSE_TO_FW]
    assert read_trace(tmp_path / "absent.jsonl") == []
    assert "no RAPI trace entries" in tail_text(tmp_path / "absent.jsonl")


REPLY_HEX = b"$OK 8.2.2 5.2.1^2E\r$AT 02 02 32 0100^31\r".hex(" ")
# Captured from socat 1.7.4.4 -d -d -x (PTY left, TCP right): log lines interleave with dumps.
DUMP = f"""2026/11/22 04:16:39 socat[7889] N starting data transfer loop with FDs [5,5] and [6,6]
> 2026/11/22 04:16:39.000449599  length=7 from=0 to=6
 24 47 56 5e 33 35 0d
< 2026/11/22 04:16:39.000449677  length=40 from=0 to=39
 {REPLY_HEX}
# harness 04:16:39 socat exited; restarting
> 2026/11/22 04:16:40.000012000  length=4 from=7 to=10
 24 47 53 5e
> 2026/11/22 04:16:40.000013000  length=3 from=11 to=13
 33 30 0d
"""


def test_socat_dump_parser_reads_direction_time_and_bytes_across_feeds() -> None:
    parser = SocatDumpParser(micro_in_nine=True)
    chunks = parser.feed(DUMP[:150]) + parser.feed(DUMP[150:])
    assert [c.direction for c in chunks] == [FW_TO_EVSE, EVSE_TO_FW, FW_TO_EVSE, FW_TO_EVSE]
    assert chunks[0].data == b"$GV^35\r"
    assert chunks[1].data == b"$OK 8.2.2 5.2.1^2E\r$AT 02 02 32 0100^31\r"
    base = time.mktime(time.struct_time((2026, 11, 22, 4, 16, 39, 0, 0, -1)))
    assert chunks[0].wall == pytest.approx(base + 0.449599)
    assert chunks[2].wall - chunks[0].wall == pytest.approx(1.0 - 0.449599 + 0.012, abs=1e-5)


def test_socat_version_decides_the_fraction_format() -> None:
    assert socat_micro_in_nine("socat version 1.7.4.4 on 06 Nov 2022")
    assert not socat_micro_in_nine("socat version 1.8.0.0 on 1 Jan 2024")


def test_socat_tracer_writes_frames_split_across_chunks(tmp_path: Path) -> None:
    log = tmp_path / "bridge.log"
    log.write_text("# harness 04:16:38 start: socat …\n")
    out = tmp_path / "rapi-trace.jsonl"
    tracer = SocatDumpTracer(log, out)
    tracer._offset = log.stat().st_size
    with log.open("a") as fh:
        fh.write(DUMP)
    assert tracer.poll() == 4
    tracer.stop()
    entries = read_trace(out)
    assert [(e["dir"], e["raw"]) for e in entries] == [
        (FW_TO_EVSE, "$GV^35"),
        (EVSE_TO_FW, "$OK 8.2.2 5.2.1^2E"),
        (EVSE_TO_FW, "$AT 02 02 32 0100^31"),
        (FW_TO_EVSE, "$GS^30"),
    ]
    assert entries[1]["reply_to"] == "GV"
    assert all(e["checksum_ok"] for e in entries)
    # wall-clock stamps become monotonic ones, 1 s apart as dumped
    assert entries[3]["t"] - entries[0]["t"] == pytest.approx(1.0 - 0.449599 + 0.013, abs=1e-5)


def test_a_late_reply_is_paired_with_its_own_command() -> None:
    """firmware.md §6.1: after a timeout the firmware sends its next command; the EVSE still
    answers the first one first (evse.md §1), so pairing is first in, first out."""
    m = ReplyMatcher()
    m.command("GS", 1.0)
    m.command("GP", 1.5)  # sent after GS timed out
    assert m.reply("AT") == {}  # async frames answer nothing
    assert m.reply("OK") == {"reply_to": "GS", "cmd_t": 1.0}
    assert m.reply("NK") == {"reply_to": "GP", "cmd_t": 1.5}
    assert m.reply("OK") == {}  # nothing outstanding
    m.command("OK", 2.0)  # not a command
    m.command("SY", 3.0)
    m.clear()  # the link dropped: nothing is outstanding any more
    assert m.reply("OK") == {}
