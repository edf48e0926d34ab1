"""A sabotaged reset: the pair is replaced instead of reused, and the report says so.

Real processes: a pytest subprocess over a small test file. Sabotage that no reset through
the public API can undo: the emulator of a pair is stopped (the reset cannot reach it), and a
GFCI fault is raised and cleared (its counter only grows). A dead firmware is restarted
instead, and that pair is still verified clean. A Ctrl-C mid-session still stops every rig."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from test_reuse import summary

from tests.harness.support import env_for

INNER = """
from __future__ import annotations

import json
import os
from pathlib import Path

OUT = Path(os.environ["REUSE_OUT"])


def record(name, rig):
    doc = {"session": rig.session, "hosts": [p.hostname for p in rig],
           "fw_pids": [p.firmware.pid for p in rig]}
    (OUT / f"{name}.json").write_text(json.dumps(doc))


def assert_clean(rig):
    for unit in rig:
        status = unit.api.get_json("/status")
        assert (status["state"], status["vehicle"]) == (1, 0), status
        evse = unit.emulator_api.get_json("/api/evse/status")
        assert (evse["error_flags"], evse["gfci_count"]) == (0, 0), evse
        rows = unit.api.get_json("/loadsharing/peers")
        assert [r for r in rows if r["joined"] and not r["isLocal"]] == []


def test_1_stop_emulator(rig):
    record("1", rig)
    rig[1].emulator.stop()


def test_2_after_stopped_emulator(rig):
    record("2", rig)
    assert_clean(rig)
    r = rig[0].emulator_api.post("/api/errors/trigger", json={"error": "gfci"})
    assert r.status_code == 200, r.text
    assert rig[0].emulator_api.post("/api/errors/clear", json={}).status_code == 200
    assert rig[0].emulator_api.get_json("/api/evse/status")["gfci_count"] == 1


def test_3_after_fault(rig):
    record("3", rig)
    assert_clean(rig)
    r = rig[1].api.post("/loadsharing/peers", json={"host": "127.0.0.1:1", "reciprocal": False})
    assert r.status_code == 200, r.text
    rig.stop_member(1)


def test_4_after_dead_firmware(rig):
    record("4", rig)
    assert_clean(rig)
"""


def _run(tmp_path: Path, run_root: Path, text: str, *args: str) -> subprocess.CompletedProcess[str]:
    inner = tmp_path / "inner"
    inner.mkdir(exist_ok=True)
    (tmp_path / "out").mkdir(exist_ok=True)
    (inner / "test_inner_sabotage.py").write_text(text)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "test_inner_sabotage.py",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(inner),
            "--instances",
            "2",
            *args,
        ],
        env=env_for(run_root, REUSE_OUT=str(tmp_path / "out")),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=inner,
    )


def test_sabotaged_reset_replaces_the_pair(tmp_path: Path, run_root: Path) -> None:
    junit = tmp_path / "junit.xml"
    result = _run(tmp_path, run_root, INNER, "-q", f"--junitxml={junit}")
    out = result.stdout
    assert result.returncode == 0, out[-5000:] + result.stderr[-2000:]
    assert "4 passed" in out
    docs = {n: json.loads((tmp_path / "out" / f"{n}.json").read_text()) for n in "1234"}
    # One rig throughout (same session), its slot 1 then slot 0 replaced by new pairs.
    assert len({d["session"] for d in docs.values()}) == 1, docs
    assert docs["2"]["hosts"][0] == docs["1"]["hosts"][0]
    assert docs["2"]["hosts"][1] != docs["1"]["hosts"][1], "stopped emulator: pair 1 replaced"
    assert docs["3"]["hosts"][0] != docs["2"]["hosts"][0], "fault counter: pair 0 replaced"
    assert docs["3"]["hosts"][1] == docs["2"]["hosts"][1]
    # The dead firmware was restarted in place (same identity, new process), then verified.
    assert docs["4"]["hosts"] == docs["3"]["hosts"]
    assert docs["4"]["fw_pids"][1] != docs["3"]["fw_pids"][1]
    counts = summary(out)
    assert counts["started"] == 1
    assert counts["reused"] == 3
    assert counts["pairs replaced"] == 2, out[-3000:]
    assert counts["firmware restarted"] == 1, out[-3000:]
    lines = [ln for ln in out.splitlines() if ln.startswith("harness: ") and " replaced by " in ln]
    assert len(lines) == 2, out[-3000:]
    assert "test_2_after_stopped_emulator" in lines[0], lines
    assert "emulator died" in lines[0], lines
    assert "test_3_after_fault" in lines[1], lines
    assert "gfci_count" in lines[1], lines
    assert any("restarted the dead firmware" in ln and "test_4" in ln for ln in out.splitlines())
    # The test that got a replaced pair carries it in its JUnit properties.
    tree = ET.parse(junit)  # noqa: S314 - written by the pytest run above
    props = {
        str(tc.get("name")): [(p.get("name"), str(p.get("value"))) for p in tc.iter("property")]
        for tc in tree.iter("testcase")
    }
    replaced = {name: [v for k, v in items if k == "harness.replaced"] for name, items in props.items()}
    assert len(replaced["test_2_after_stopped_emulator[n2]"]) == 1, replaced
    assert len(replaced["test_3_after_fault[n2]"]) == 1, replaced
    assert "gfci_count" in replaced["test_3_after_fault[n2]"][0]
    assert replaced["test_1_stop_emulator[n2]"] == []
    assert replaced["test_4_after_dead_firmware[n2]"] == []
    assert list((run_root / "sessions").iterdir()) == []


INTERRUPTED = """
import os
import signal


def test_a(rig):
    assert len(rig) == 2


def test_b(rig):
    os.kill(os.getpid(), signal.SIGINT)
"""


def test_ctrl_c_stops_pooled_rigs(tmp_path: Path, run_root: Path) -> None:
    result = _run(tmp_path, run_root, INTERRUPTED, "-q")
    assert result.returncode == 2, result.stdout[-3000:]  # pytest: interrupted
    assert "KeyboardInterrupt" in result.stdout
    counts = summary(result.stdout)
    assert (counts["started"], counts["torn down"]) == (1, 1), result.stdout[-2000:]
    # Everything stopped: the session dir (removed only after a clean stop) is gone.
    assert list((run_root / "sessions").iterdir()) == []


BROKEN_FIRMWARE = """#!/bin/sh
if [ "$1" = "--help" ]; then echo "usage: program [--rapi-serial PTY]"; exit 0; fi
echo "deliberately broken firmware: cannot open the EVSE" >&2
exit 3
"""

BROKEN_TEST = """
def test_gets_a_rig(rig):
    raise AssertionError("never reached: the rig cannot start")
"""


def test_a_failed_start_reports_the_firmware_log(tmp_path: Path, run_root: Path) -> None:
    """Prestarted in the background (auto for a real build) or not, a start failure is the
    test's error, with the firmware's log in the report, and nothing is left running."""
    program = tmp_path / "program"
    program.write_text(BROKEN_FIRMWARE)
    program.chmod(0o755)
    for prestart in ("auto", "off"):
        result = _run(
            tmp_path, run_root, BROKEN_TEST, "-q", "--native", str(program), "--rig-prestart", prestart
        )
        out = result.stdout
        assert result.returncode == 1, out[-3000:]
        assert "1 error" in out, out[-2000:]
        assert "firmware log (setup)" in out, out[-3000:]
        assert "deliberately broken firmware" in out
        counts = summary(out)
        assert (counts["started"], counts["torn down"]) == (1, 1), out[-2000:]
        assert list((run_root / "sessions").iterdir()) == []
