"""`pytest -n 2` over a 4-instance test file: two rigs alive at once, nothing shared."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.harness.support import env_for

INNER = """
from __future__ import annotations

import json
import os
from pathlib import Path

from harness.waiting import NotYet, wait_until

OUT = Path(os.environ["CLASH_DIR"])


def _hold_until_other_is_up(rig, me: str, other: str) -> None:
    for pair in rig:
        assert pair.api.get_json("/status")["state"] != 0
    doc = {"worker": os.environ.get("PYTEST_XDIST_WORKER"), "session": rig.session,
           "instances": rig.describe()}
    (OUT / f"{me}.json").write_text(json.dumps(doc))

    def other_up(_remaining: float) -> bool:
        if not (OUT / f"{other}.json").exists():
            raise NotYet(f"{other}.json not written")
        return True

    # Both rigs are alive at the same time: their ports and names must not clash.
    wait_until(other_up, instance=me, what="the other worker's rig", timeout=90)


def test_a(rig):
    _hold_until_other_is_up(rig, "a", "b")


def test_b(rig):
    _hold_until_other_is_up(rig, "b", "a")
"""


def test_two_xdist_workers_four_instances_each_do_not_clash(tmp_path: Path, run_root: Path) -> None:
    (tmp_path / "inner").mkdir()
    test_file = tmp_path / "inner" / "test_inner_clash.py"
    test_file.write_text(INNER)
    clash = tmp_path / "clash"
    clash.mkdir()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-n",
            "2",
            "--instances",
            "4",
            str(test_file),
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path / "inner"),
            "-q",
        ],
        env=env_for(run_root, CLASH_DIR=str(clash)),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=tmp_path / "inner",
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "2 passed" in result.stdout
    a = json.loads((clash / "a.json").read_text())
    b = json.loads((clash / "b.json").read_text())
    assert {a["worker"], b["worker"]} == {"gw0", "gw1"}
    assert a["session"] != b["session"]
    for key in ("firmware_port", "emulator_port", "name", "hostname", "chip_id", "long_id", "pty_path"):
        values = [inst[key] for doc in (a, b) for inst in doc["instances"]]
        assert len(values) == 8
        assert len(set(values)) == 8, f"{key} clashes: {values}"
    # Each worker drew its firmware ports from its own block (engineering.md §2.a).
    blocks = {doc["worker"]: {inst["firmware_port"] // 200 for inst in doc["instances"]} for doc in (a, b)}
    assert blocks["gw0"].isdisjoint(blocks["gw1"])
    # And every session was cleaned up when the workers' fixtures finished.
    assert list((run_root / "sessions").iterdir()) == []
