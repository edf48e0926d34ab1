"""The pure parts of the RAPI link benchmark: framing, reply checks, the client loop on a
socketpair, the latency summary, the figures, the table and the CLI switches."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench import link_client
from bench.__main__ import LINK_REPS, QUICK_LINK_REPS, link_reps_of, parse_args
from bench.link import (
    PATHS,
    default_delay_reps,
    format_link,
    latency_summary,
    link_figures,
    merge_client,
    new_path_result,
    parse_client_output,
    split_reps,
)
from bench.link_client import (
    FrameSplitter,
    checksum_ok,
    frame,
    is_reply,
    reply_ok,
    round_trips,
)
from bench.report import format_table

# ---- framing --------------------------------------------------------------------------------


def test_frame_appends_the_upper_case_xor_of_dollar_up_to_the_caret() -> None:
    assert frame("$GS") == b"$GS^30\r"  # 0x24 ^ 0x47 ^ 0x53
    assert frame("$GV") == b"$GV^35\r"
    assert frame("$SC 16") == b"$SC 16^" + b"%02X" % (0x24 ^ 0x53 ^ 0x43 ^ 0x20 ^ 0x31 ^ 0x36) + b"\r"
    with pytest.raises(ValueError, match="starts with"):
        frame("GS")


def test_checksum_ok_wants_two_matching_upper_case_hex_digits() -> None:
    good = frame("$OK 1 123 32 0").decode().rstrip("\r")
    assert checksum_ok(good)
    body, cc = good.rsplit("^", 1)
    assert not checksum_ok("$OK 1 2^3G")
    assert not checksum_ok(f"{body}^{int(cc, 16) ^ 1:02X}")
    assert not checksum_ok(body)  # no checksum at all
    assert not checksum_ok("$OK^0")


def test_lower_case_hex_is_a_bad_checksum() -> None:
    # the first "$OK <i>" whose checksum has a hex letter
    texts = (frame(f"$OK {i}").decode().rstrip("\r") for i in range(256))
    text = next(t for t in texts if any(c in "ABCDEF" for c in t[-2:]))
    assert checksum_ok(text)
    assert not checksum_ok(text[:-2] + text[-2:].lower())


def test_replies_and_unsolicited_frames_are_told_apart() -> None:
    ok = frame("$OK 1 0 32 0").decode().rstrip("\r")
    assert is_reply(ok)
    assert reply_ok(ok)
    assert is_reply("$NK^20")
    assert not reply_ok("$NK^20")
    assert is_reply("$OK^20")
    assert reply_ok("$OK^20")
    assert not is_reply(frame("$AT 1 2 32 0").decode().rstrip("\r"))
    assert not is_reply("$AB 00 8.2.3^1F")
    assert not is_reply("$OKAY")
    assert not reply_ok(ok[:-2] + "FF")  # the right one is 10


def test_splitter_reassembles_frames_across_reads_and_drops_noise() -> None:
    s = FrameSplitter()
    assert list(s.feed(b"\x00\xff~$OK 1")) == []
    assert list(s.feed(b" 2^33\r$AT 1")) == ["$OK 1 2^33"]
    assert list(s.feed(b" 2 3 4^00\r\r$NK^20\r")) == ["$AT 1 2 3 4^00", "$NK^20"]
    # a "$" inside a frame starts a new one: what came before it was torn
    assert list(s.feed(b"$OK tor$OK^20\r")) == ["$OK^20"]
    assert list(s.feed(b"junk without a dollar\r")) == []


# ---- the client loop on a socketpair ----------------------------------------------------------


class FakeEvse:
    """Answers each command on a socket with ``$OK 1 0 32 0``; an ``$AT`` before the 3rd reply,
    a bad reply for the 5th, silence from the ``silent_after``-th on."""

    def __init__(self, sock: socket.socket, silent_after: int | None = None) -> None:
        self.sock = sock
        self.silent_after = silent_after
        self.commands: list[bytes] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        buf = b""
        with self.sock:
            while data := self.sock.recv(1024):
                buf += data
                while b"\r" in buf:
                    command, buf = buf.split(b"\r", 1)
                    self.commands.append(command)
                    n = len(self.commands)
                    if self.silent_after is not None and n >= self.silent_after:
                        continue
                    out = b""
                    if n == 3:
                        out += frame("$AT 1 2 32 0")
                    out += b"$OK 1 0 32 0^1f\r" if n == 5 else frame("$OK 1 0 32 0")  # right: ^10
                    self.sock.sendall(out)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()


def test_round_trips_times_only_the_measured_commands_and_checks_each_reply(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    client, evse_side = pair
    evse = FakeEvse(evse_side)
    ticks = iter(range(0, 10**9, 1000))
    result = round_trips(
        client.fileno(), frame("$GS"), reps=6, warmup=2, timeout=5.0, clock=lambda: next(ticks)
    )
    assert result.error is None
    assert len(evse.commands) == 8
    assert set(evse.commands) == {b"$GS^30"}
    assert result.samples_ns == [1000] * 6  # one clock tick per round trip, warm-up left out
    assert result.ok == 5
    assert result.bad_count == 1
    assert result.bad == ["$OK 1 0 32 0^1f"]
    assert result.unsolicited == 1  # the $AT was skipped, not taken for a reply
    assert result.example == frame("$OK 1 0 32 0").decode().rstrip("\r")
    assert result.request == "$GS^30"


def test_a_missing_reply_ends_the_run_and_keeps_what_was_measured(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    client, evse_side = pair
    FakeEvse(evse_side, silent_after=4)
    result = round_trips(client.fileno(), frame("$GS"), reps=10, warmup=1, timeout=0.2)
    assert result.error is not None
    assert "round trip 4 of 11" in result.error
    assert "TimeoutError" in result.error
    assert len(result.samples_ns) == 2


def test_a_closed_link_is_an_error_not_a_hang(pair: tuple[socket.socket, socket.socket]) -> None:
    client, evse_side = pair
    evse_side.close()
    result = round_trips(client.fileno(), frame("$GS"), reps=3, warmup=0, timeout=2.0)
    assert result.error is not None
    assert result.samples_ns == []


def test_client_main_prints_one_json_result_and_fails_on_a_bad_target(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert link_client.main([f"pty:{tmp_path / 'absent.pty'}", "--reps", "3"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["samples_ns"] == []
    assert "absent.pty" in out["error"]
    with pytest.raises(ValueError, match="tcp:HOST:PORT"), link_client.open_target("serial:/dev/ttyS0", 1.0):
        pass


# ---- summarising --------------------------------------------------------------------------------


def test_latency_summary_has_the_tail() -> None:
    s = latency_summary([float(v) for v in range(1, 101)])
    assert s is not None
    assert s["n"] == 100
    assert s["p50"] == pytest.approx(50.5)
    assert s["p95"] == pytest.approx(95.05)
    assert s["p99"] == pytest.approx(99.01)
    assert (s["min"], s["max"]) == (1.0, 100.0)
    assert s["mean"] == pytest.approx(50.5)
    assert latency_summary([]) is None
    assert latency_summary([float("nan")]) is None
    one = latency_summary([0.2])
    assert one is not None
    assert one["p99"] == one["max"] == 0.2


def test_split_reps_spreads_evenly_over_the_rounds() -> None:
    assert split_reps(10, 3) == [4, 3, 3]
    assert split_reps(500, 5) == [100] * 5
    assert split_reps(2, 5) == [1, 1, 0, 0, 0]
    assert sum(split_reps(97, 4)) == 97
    with pytest.raises(ValueError):
        split_reps(-1, 2)
    with pytest.raises(ValueError):
        split_reps(5, 0)


def test_the_delayed_path_gets_a_fifth_of_the_reps() -> None:
    assert default_delay_reps(500) == 100
    assert default_delay_reps(3) == 1
    assert default_delay_reps(0) == 0


def test_client_runs_add_up_per_path() -> None:
    entry = new_path_result(PATHS[1])
    merge_client(
        entry, {"samples_ns": [1_000_000, 2_500_000], "ok": 2, "unsolicited": 1, "example": "$OK^20"}
    )
    merge_client(
        entry, {"samples_ns": [500_000], "ok": 0, "bad_count": 1, "bad": ["$NK^20"], "error": "round trip 2"}
    )
    assert entry["runs"] == 2
    assert entry["samples_ms"] == [1.0, 2.5, 0.5]
    assert (entry["ok"], entry["bad_count"], entry["bad"]) == (2, 1, ["$NK^20"])
    assert entry["unsolicited"] == 1
    assert entry["example"] == "$OK^20"
    assert entry["errors"] == ["round trip 2"]


def test_client_output_without_json_becomes_an_error() -> None:
    assert parse_client_output('noise\n{"samples_ns": [1], "ok": 1}\n', "", 0)["ok"] == 1
    bad = parse_client_output("", "Traceback\nImportError: boom\n", 1)
    assert bad["samples_ns"] == []
    assert "exited 1" in bad["error"]
    assert "ImportError: boom" in bad["error"]
    assert "error" in parse_client_output("{not json", "", 1)


def _link(**samples: list[float]) -> dict[str, Any]:
    paths = {p.key: new_path_result(p) for p in PATHS}
    for key, values in samples.items():
        paths[key]["samples_ms"] = values
        paths[key]["ok"] = len(values)
        paths[key]["runs"] = 1
    return {"command": "$GS^30", "rounds": 1, "warmup": 20, "paths": paths, "skipped": {}, "error": None}


def test_link_figures_give_the_overheads_and_the_measured_delay() -> None:
    link = _link(
        tcp=[0.10, 0.12, 0.11], socat=[0.20, 0.22, 0.21], python=[0.30, 0.32, 0.31], python_delay=[51.0, 51.5]
    )
    fig = link_figures(link)
    assert fig["paths"]["tcp"]["p50"] == pytest.approx(0.11)
    assert fig["p50_over_direct_ms"]["socat"] == pytest.approx(0.10)
    assert fig["p50_over_direct_ms"]["python"] == pytest.approx(0.20)
    assert fig["delay_added_p50_ms"] == pytest.approx(51.25 - 0.31)
    assert fig["delay_min_ms"] == 51.0
    assert link_figures({}) == {"paths": {}}
    partial = link_figures(_link(socat=[0.2]))
    assert "p50_over_direct_ms" not in partial
    assert "delay_added_p50_ms" not in partial


def test_format_link_rows_skips_and_errors() -> None:
    link = _link(tcp=[0.1, 0.2], python=[0.3], python_delay=[50.9])
    link["skipped"]["socat"] = "socat is not installed (fix: apt-get install socat)"
    link["paths"]["python"]["errors"] = ["round trip 7 of 20: TimeoutError: no reply"]
    link["paths"]["python"]["bad_count"] = 1
    link["paths"]["python"]["bad"] = ["$NK^20"]
    text = "\n".join(format_link(link, link_figures(link)))
    assert "$GS^30" in text
    assert "direct TCP (no bridge)" in text
    assert "2 $OK" in text
    assert "not measured: socat is not installed (fix: apt-get install socat)" in text
    assert "1 bad ['$NK^20']" in text
    assert "error: round trip 7 of 20" in text
    assert "delay check: fault(delay_ms=50) added 50.600 ms" in text
    assert format_link({}, {}) == []


def test_the_table_shows_the_link_section_and_link_only_runs_show_nothing_else() -> None:
    link = _link(tcp=[0.1], socat=[0.2], python=[0.3], python_delay=[50.5])
    results: dict[str, Any] = {"figures": {"link_ms": link_figures(link)}, "link": link}
    full = format_table(results)
    assert "figure" in full
    assert "RAPI round trip" in full
    assert "floors" in full
    only = format_table({**results, "rigs_skipped": "--link-only", "machine": {"cpu_count": 2}})
    assert "RAPI round trip" in only
    assert "floors" not in only
    assert "not measured (--link-only)" in only
    assert "machine: 2 cpus" in only
    skipped = format_table({"figures": {}, "link_skipped": "--no-link"})
    assert "RAPI link: not measured (--no-link)" in skipped


# ---- the CLI --------------------------------------------------------------------------------------


def test_link_switches_default_on_with_fewer_reps_when_quick() -> None:
    args = parse_args([])
    assert args.link is True
    assert args.link_only is False
    assert link_reps_of(args) == LINK_REPS == 500
    assert link_reps_of(parse_args(["--quick"])) == QUICK_LINK_REPS == 100
    assert link_reps_of(parse_args(["--quick", "--link-reps", "40"])) == 40
    assert parse_args(["--no-link"]).link is False
    assert parse_args(["--link-only"]).link_only is True
    with pytest.raises(SystemExit):
        parse_args(["--link-reps", "0"])
