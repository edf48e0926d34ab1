"""The --trace writer (one JSON line per frame)."""

from __future__ import annotations

import json
from pathlib import Path

from emulator.trace import Trace


def test_trace_lines(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    trace = Trace(path)
    trace.record("rx", b"$GV^35", "GV", True)
    trace.record("tx", b"$OK 8.2.2 5.2.1^2E\r", "GV", True, "reply")
    trace.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(x["dir"], x["raw"], x["command"], x["checksum_ok"]) for x in lines] == [
        ("rx", "$GV^35", "GV", True),
        ("tx", "$OK 8.2.2 5.2.1^2E", "GV", True),
    ]
    assert lines[1]["kind"] == "reply"
    assert lines[0]["t"] <= lines[1]["t"]


def test_no_path_is_a_no_op() -> None:
    trace = Trace(None)
    trace.record("rx", b"$GV", "GV", True)
    trace.close()
