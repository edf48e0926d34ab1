"""Every pair keeps `rapi-trace.jsonl`, whatever the bridge, and a failing test's report shows
its tail next to the log tails (a pytest subprocess over a small test file)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness.support import env_for

INNER = """
from harness.trace import read_trace


def test_fails_with_a_trace(instance_pair):
    pair = instance_pair()
    entries = read_trace(pair.trace_path)
    print("TRACE-FILE", pair.trace_path, len(entries))
    assert False, "deliberate failure"
"""


@pytest.mark.parametrize("bridge", ["socat", "python"])
def test_failing_test_report_has_the_trace_tail(tmp_path: Path, run_root: Path, bridge: str) -> None:
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "test_inner_trace.py").write_text(INNER)
    argv = [sys.executable, "-m", "pytest", str(inner / "test_inner_trace.py"), "-p", "no:cacheprovider"]
    result = subprocess.run(
        [*argv, "--rootdir", str(inner), "-rA", "--basetemp", str(tmp_path / "inner-tmp")],
        env=env_for(run_root, HARNESS_BRIDGE=bridge),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=inner,
    )
    out = result.stdout
    assert result.returncode == 1, out[-3000:]
    section = re.search(r"rapi-trace log \(call\) -+\n(.*?)\n[-=]{5,} ", out, re.DOTALL)
    assert section is not None, out[-3000:]
    shown = section.group(1)
    # readable lines: direction, frame, reply pairing — the boot reads of firmware.md §6.2
    assert re.search(r"fw->evse\s+\$GV\^35", shown), shown
    assert "reply_to=GV" in shown
    assert "evse->fw" in shown
    m = re.search(r"TRACE-FILE (\S+) (\d+)", out)
    assert m is not None
    assert int(m.group(2)) > 0
    # the file itself is JSON lines with the documented fields (docs/faults.md)
    first = next(e for e in map(json.loads, Path(m.group(1)).read_text().splitlines()) if "dir" in e)
    assert set(first) >= {"t", "dir", "raw", "command", "checksum_ok"}
