"""The pytest plugin as users meet it: a pytest subprocess over a small test file."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.harness.support import env_for

INNER = """
import pytest


@pytest.mark.instances(1, 2)
def test_sizes(rig, request):
    assert len(rig) in (1, 2)
    assert request.node.callspec.id == f"n{len(rig)}"
    for pair in rig:
        assert pair.api.get_json("/status")["state"] != 0


def test_upstream_pair(instance_pair, evse_instance):
    pair = instance_pair(port_offset=5)
    assert pair["native_url"] != evse_instance["native_url"]
    assert pair["pty_path"] != evse_instance["pty_path"]


def test_group(multi_instance_group):
    group = multi_instance_group(3)
    assert len({p.hostname for p in group}) == 3


def test_fails_with_logs(instance_pair):
    instance_pair()
    assert False, "deliberate failure"
"""


BRIDGE_INNER = """
import pytest
from harness.fault_bridge import FaultBridge
from harness.trace import read_trace


@pytest.mark.bridge("python")
def test_marked_gets_the_faultable_bridge(instance_pair):
    pair = instance_pair()
    assert isinstance(pair.bridge, FaultBridge)
    with pair.serial.fault(drop=1) as f:
        f.wait(dropped=1)
    assert [e for e in read_trace(pair.trace_path) if e.get("fault") == "dropped"]


def test_unmarked_keeps_the_run_bridge(instance_pair):
    assert instance_pair().bridge.kind == "socat"
"""

BAD_BRIDGE_INNER = """
import pytest


@pytest.mark.bridge("serial-cable")
def test_bad(instance_pair):
    instance_pair()
"""


def _pytest(
    tmp_path: Path, run_root: Path, *args: str, inner_text: str = INNER, **env: str
) -> subprocess.CompletedProcess[str]:
    inner = tmp_path / "inner"
    inner.mkdir(exist_ok=True)
    (inner / "test_inner_plugin.py").write_text(inner_text)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(inner / "test_inner_plugin.py"),
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(inner),
            "-rA",
            *args,
        ],
        env=env_for(run_root, **env),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=inner,
    )


def test_fixtures_parametrization_header_and_failure_logs(tmp_path: Path, run_root: Path) -> None:
    junit = tmp_path / "junit.xml"
    result = _pytest(tmp_path, run_root, "--instances", "1,2,4", f"--junitxml={junit}")
    out = result.stdout
    assert result.returncode == 1, out[-3000:]
    assert "STAND-IN openevse_sim" in out  # loud header
    assert "PASSED test_inner_plugin.py::test_sizes[n1]" in out
    assert "PASSED test_inner_plugin.py::test_sizes[n2]" in out
    assert "FAILED test_inner_plugin.py::test_fails_with_logs" in out
    assert "test_sizes[n4]" not in out  # narrowed by @pytest.mark.instances(1, 2)
    assert "5 passed" not in out
    assert "4 passed, 1 failed" in out or "1 failed, 4 passed" in out
    # The failing test's instance logs appear under the failure ...
    assert "firmware log (call)" in out
    assert "emulator log (call)" in out
    # ... and their paths in the JUnit properties; run facts as testsuite properties.
    tree = ET.parse(junit)  # noqa: S314 - written by the pytest run above
    failed = next(tc for tc in tree.iter("testcase") if tc.get("name") == "test_fails_with_logs")
    props = {p.get("name"): p.get("value") for p in failed.iter("property")}
    fw_logs = [v for k, v in props.items() if k and k.endswith(".firmware")]
    assert len(fw_logs) == 1
    fw_log = Path(str(fw_logs[0]))
    # The report's section is the tail of that very file (bounded to 60 lines).
    section = re.search(r"firmware log \(call\) -+\n(.*?)\n-{5,} ", out, re.DOTALL)
    assert section is not None
    shown = [line for line in section.group(1).splitlines() if line.strip()]
    assert 0 < len(shown) <= 60
    file_lines = set(fw_log.read_text().splitlines())
    assert all(line in file_lines for line in shown)
    suite_props = {p.get("name"): p.get("value") for p in tree.find(".//testsuite/properties") or []}
    assert suite_props["harness.emulator_backend"] == "process"
    assert suite_props["harness.instances"] == "1,2,4"
    assert "STAND-IN" in str(suite_props["harness.firmware"])
    assert list((run_root / "sessions").iterdir()) == []  # every fixture cleaned up


def test_missing_firmware_skips_loudly_outside_ci(tmp_path: Path, run_root: Path) -> None:
    # CI="" so the inner run is "outside CI" even when this suite itself runs under CI=true.
    result = _pytest(tmp_path, run_root, "-k", "upstream", NATIVE_BINARY_PATH="/nonexistent/program", CI="")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "1 skipped" in result.stdout
    assert "PREREQUISITE MISSING" in result.stdout
    assert "/nonexistent/program" in result.stdout


def test_missing_firmware_fails_under_ci(tmp_path: Path, run_root: Path) -> None:
    result = _pytest(
        tmp_path, run_root, "-k", "upstream", NATIVE_BINARY_PATH="/nonexistent/program", CI="true"
    )
    assert result.returncode == 1, result.stdout[-3000:]
    assert "skipped" not in result.stdout.splitlines()[-1]
    assert "CI=true: failing instead of skipping" in result.stdout


def test_bridge_marker_gives_a_test_its_own_bridge(tmp_path: Path, run_root: Path) -> None:
    """`@pytest.mark.bridge("python")`: link faults in one test while the run uses socat."""
    if shutil.which("socat") is None:
        pytest.fail("socat is not installed (fix: apt-get install socat)")
    result = _pytest(tmp_path, run_root, inner_text=BRIDGE_INNER, HARNESS_BRIDGE="socat")
    out = result.stdout
    assert result.returncode == 0, out[-3000:]
    assert "PASSED test_inner_plugin.py::test_marked_gets_the_faultable_bridge" in out
    assert "PASSED test_inner_plugin.py::test_unmarked_keeps_the_run_bridge" in out
    # Only the unmarked test's rig came from the pool.
    assert "harness rigs (--rig-scope session): 1 started" in out
    assert list((run_root / "sessions").iterdir()) == []


def test_bridge_marker_rejects_an_unknown_bridge(tmp_path: Path, run_root: Path) -> None:
    result = _pytest(tmp_path, run_root, inner_text=BAD_BRIDGE_INNER)
    assert result.returncode != 0, result.stdout[-3000:]
    assert "@pytest.mark.bridge('serial-cable'): the bridge must be one of socat, python" in (
        result.stdout + result.stderr
    )
