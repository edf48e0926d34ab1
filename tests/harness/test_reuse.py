"""Rig reuse as users meet it: a pytest subprocess over small test files, real processes.

Isolation (a dirtying test and a test that asserts the baseline, in both orders and under
``-n 2``), the member lockout handled by the reset, ``fresh_rig``, ``--rig-scope test`` and
``module``, and the rig summary in the terminal."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.harness.support import env_for

# Shared by the inner test files: what "dirty" does and what "clean" asserts (baseline).
COMMON = '''
from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import quote

OUT = Path(os.environ["REUSE_OUT"])
TEST_CLIENT = 4242
MANUAL_CLIENT = 65537


def supported(unit, path):
    """The stand-in may not have /override and /claims yet (AP mode redirects: 301)."""
    return unit.api.get(path).status_code == 200


def record(name, rig):
    doc = {"session": rig.session, "hosts": [p.hostname for p in rig],
           "worker": os.environ.get("PYTEST_XDIST_WORKER", "main")}
    (OUT / f"{name}.json").write_text(json.dumps(doc))


def assert_clean(rig):
    for unit in rig:
        rows = unit.api.get_json("/loadsharing/peers")
        joined = [r for r in rows if r["joined"] and not r["isLocal"]]
        assert joined == [], f"{unit.name}: leftover joined peers {joined}"
        local = rows[0]
        assert local["isLocal"] and local["host"] == f"{unit.hostname}.local", local
        cfg = unit.api.get_json("/config")
        assert cfg["loadsharing_heartbeat_timeout"] == 30, cfg["loadsharing_heartbeat_timeout"]
        assert cfg["loadsharing_group_id"] == "", cfg["loadsharing_group_id"]
        assert cfg["loadsharing_enabled"] is False
        assert cfg["loadsharing_role"] == ""
        assert cfg["loadsharing_controller_host"] == ""
        if supported(unit, "/override"):
            assert unit.api.get_json("/override") == {}
        if supported(unit, "/claims"):
            clients = [c["client"] for c in unit.api.get_json("/claims")]
            assert MANUAL_CLIENT not in clients and TEST_CLIENT not in clients, clients
        status = unit.api.get_json("/status")
        assert (status["vehicle"], status["state"]) == (0, 1), status
        ev = unit.emulator_api.get_json("/api/ev/status")
        assert ev["connected"] is False and ev["requesting_charge"] is False, ev
        evse = unit.emulator_api.get_json("/api/evse/status")
        assert evse["error_flags"] == 0, evse


def make_dirty(rig):
    assert_clean(rig)  # dirty's own precondition: also proves isolation when it runs second
    u0, u1 = rig[0], rig[1]
    r = u0.api.post("/loadsharing/peers", json={"host": f"localhost:{u1.firmware_port}"})
    assert r.status_code == 200, r.text
    r = u0.api.post("/loadsharing/peers", json={"host": "127.0.0.1:1", "reciprocal": False})
    assert r.status_code == 200, r.text
    r = u0.api.post("/config", json={"loadsharing_heartbeat_timeout": 7, "loadsharing_group_id": "dirty"})
    assert r.status_code == 200, r.text
    if supported(u0, "/override"):
        r = u0.api.post("/override", json={"state": "disabled"})
        assert r.status_code == 201, r.text
    if supported(u0, "/claims"):
        r = u0.api.post(f"/claims/{TEST_CLIENT}", json={"max_current": 10})
        assert r.status_code == 200, r.text
    for path in ("/api/ev/connect", "/api/ev/request_charge"):
        assert u1.emulator_api.post(path, json={}).status_code == 200
    r = u1.emulator_api.post("/api/ev/max_rate", json={"amps": 12})
    assert r.status_code == 200, r.text
    # §4.3: a member refuses load-sharing config without loadsharing_role in the body, and
    # refuses peer deletes: the reset must cope with both.
    r = u1.api.post("/config", json={"loadsharing_enabled": True, "loadsharing_role": "member",
                                     "loadsharing_controller_host": "x.local"})
    assert r.status_code == 200, r.text
    r = u1.api.post("/config", json={"loadsharing_group_id": "refused"})
    assert r.status_code == 403, r.text
    assert u0.api.get_json("/config")["loadsharing_group_id"] == "dirty"
    assert any(r["joined"] and not r["isLocal"] for r in u0.api.get_json("/loadsharing/peers"))
'''

ISOLATION = """

def test_{first}(rig):
    {first_body}(rig)


def test_{second}(rig):
    {second_body}(rig)


def test_{first}_again(rig):
    {first_body}(rig)
"""


def _pytest(
    tmp_path: Path, run_root: Path, files: dict[str, str], *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    inner = tmp_path / "inner"
    inner.mkdir(exist_ok=True)
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    for name, text in files.items():
        (inner / name).write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "pytest", *files, "-p", "no:cacheprovider", "--rootdir", str(inner), *args],
        env=env_for(run_root, REUSE_OUT=str(out)),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=inner,
    )


def summary(stdout: str) -> dict[str, int]:
    """The counts of the ``harness rigs`` terminal summary line."""
    line = next(ln for ln in stdout.splitlines() if ln.startswith("harness rigs (--rig-scope"))
    counts = {
        name: int(n)
        for n, name in re.findall(
            r"(\d+) (started|reused|reset|pairs replaced|firmware restarted|torn down)", line
        )
    }
    assert len(counts) == 6, line
    return counts


def isolation_file(first: str) -> str:
    second = "clean" if first == "dirty" else "dirty"
    body = {"dirty": "make_dirty", "clean": "assert_clean"}
    return COMMON + ISOLATION.format(
        first=first, second=second, first_body=body[first], second_body=body[second]
    )


def outputs(tmp_path: Path) -> dict[str, dict[str, object]]:
    return {p.stem: json.loads(p.read_text()) for p in (tmp_path / "out").glob("*.json")}


def test_isolation_both_orders_session_scope(tmp_path: Path, run_root: Path) -> None:
    files = {
        "test_a_dirty_first.py": isolation_file("dirty"),
        "test_b_clean_first.py": isolation_file("clean"),
    }
    result = _pytest(tmp_path, run_root, files, "--instances", "2", "-q")
    out = result.stdout
    assert result.returncode == 0, out[-5000:] + result.stderr[-2000:]
    assert "6 passed" in out, out[-2000:]
    counts = summary(out)
    # One rig of size 2 served all six tests: five times reset and verified, never replaced.
    assert counts["started"] == 1, out[-2000:]
    assert counts["reused"] == 5
    assert counts["reset"] == 5
    assert counts["pairs replaced"] == 0, out[-3000:]
    assert counts["torn down"] == 1
    assert list((run_root / "sessions").iterdir()) == []


def test_isolation_under_xdist(tmp_path: Path, run_root: Path) -> None:
    files = {
        "test_a_dirty_first.py": isolation_file("dirty"),
        "test_b_clean_first.py": isolation_file("clean"),
    }
    files["test_a_dirty_first.py"] += "\n\ndef test_record_a(rig):\n    record('a', rig)\n"
    files["test_b_clean_first.py"] += "\n\ndef test_record_b(rig):\n    record('b', rig)\n"
    result = _pytest(tmp_path, run_root, files, "--instances", "2", "-q", "-n", "2", "--dist", "loadfile")
    out = result.stdout
    assert result.returncode == 0, out[-5000:] + result.stderr[-2000:]
    assert "8 passed" in out, out[-2000:]
    docs = outputs(tmp_path)
    assert {docs["a"]["worker"], docs["b"]["worker"]} == {"gw0", "gw1"}, docs
    assert docs["a"]["session"] != docs["b"]["session"]
    # The workers' numbers reached the controller's summary: one rig per worker, each reused.
    counts = summary(out)
    assert counts["started"] == 2, out[-2000:]
    assert counts["reused"] == 6
    assert counts["reset"] == 6
    assert counts["pairs replaced"] == 0, out[-3000:]
    assert counts["torn down"] == 2
    assert list((run_root / "sessions").iterdir()) == []


SCOPES = """
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

OUT = Path(os.environ["REUSE_OUT"])


def record(name, rig):
    (OUT / f"{name}.json").write_text(json.dumps({"session": rig.session}))


def test_one(rig):
    record("{mod}_one", rig)


@pytest.mark.fresh_rig
def test_fresh(rig):
    record("{mod}_fresh", rig)


def test_two(multi_instance_group):
    record("{mod}_two", multi_instance_group(2))
"""


def test_fresh_rig_marker_and_scopes(tmp_path: Path, run_root: Path) -> None:
    files = {"test_m1.py": SCOPES.replace("{mod}", "m1"), "test_m2.py": SCOPES.replace("{mod}", "m2")}
    sessions: dict[str, dict[str, str]] = {}
    for scope in ("session", "module", "test"):
        for old in (tmp_path / "out").glob("*.json"):
            old.unlink()
        result = _pytest(tmp_path, run_root, files, "--instances", "2", "-q", "--rig-scope", scope)
        assert result.returncode == 0, result.stdout[-4000:]
        sessions[scope] = {k: str(v["session"]) for k, v in outputs(tmp_path).items()}
        counts = summary(result.stdout)
        assert counts["started"] == counts["torn down"], result.stdout[-2000:]
        assert list((run_root / "sessions").iterdir()) == []
    s = sessions["session"]
    # fresh_rig gets a rig of its own; the pooled one serves the others, across modules.
    assert s["m1_one"] == s["m1_two"] == s["m2_one"] == s["m2_two"], s
    assert s["m1_fresh"] not in (s["m1_one"], s["m2_fresh"]), s
    m = sessions["module"]
    assert m["m1_one"] == m["m1_two"], m
    assert m["m2_one"] == m["m2_two"], m
    assert m["m1_one"] != m["m2_one"], m
    t = sessions["test"]
    assert len(set(t.values())) == 6, t


HTTP_ONLY = """
import pytest


@pytest.mark.http_only
def test_http_first(rig):
    # HTTP answers; the EVSE link may still be coming up. Dirty the config over HTTP.
    for unit in rig:
        r = unit.api.post("/config", json={"loadsharing_group_id": "http-only"})
        assert r.status_code == 200, r.text


def test_needs_link(rig):
    for unit in rig:
        status = unit.api.get_json("/status")
        assert status["state"] == 1, status
        assert unit.api.get_json("/config")["loadsharing_group_id"] == ""
"""


def test_http_only_defers_the_link_wait_to_the_next_test(tmp_path: Path, run_root: Path) -> None:
    result = _pytest(tmp_path, run_root, {"test_http_only.py": HTTP_ONLY}, "--instances", "3", "-q")
    out = result.stdout
    assert result.returncode == 0, out[-4000:]
    assert "2 passed" in out
    counts = summary(out)
    assert (counts["started"], counts["reused"], counts["pairs replaced"]) == (1, 1, 0), out[-2000:]
    assert "harness rigs: 1 deferred EVSE-link waits" in out, out[-2000:]


def test_fresh_rig_and_reuse_with_prestart(tmp_path: Path, run_root: Path) -> None:
    """With prestart, rigs start in the background ahead of need; the same contract holds."""
    files = {"test_m1.py": SCOPES.replace("{mod}", "m1"), "test_m2.py": SCOPES.replace("{mod}", "m2")}
    result = _pytest(tmp_path, run_root, files, "--instances", "2", "-q", "--rig-prestart", "on")
    assert result.returncode == 0, result.stdout[-4000:]
    s = {k: str(v["session"]) for k, v in outputs(tmp_path).items()}
    assert s["m1_one"] == s["m1_two"] == s["m2_one"] == s["m2_two"], s
    assert len({s["m1_one"], s["m1_fresh"], s["m2_fresh"]}) == 3, s
    counts = summary(result.stdout)
    # One pooled rig and one spare per fresh test, started ahead; all stopped.
    assert (counts["started"], counts["reused"], counts["torn down"]) == (3, 3, 3), result.stdout[-2000:]
    assert list((run_root / "sessions").iterdir()) == []


EARLY_CLOSE = """
import json
import os
from pathlib import Path

OUT = Path(os.environ["REUSE_OUT"])


def test_first(rig):
    assert rig[0].api.get_json("/status")["state"] != 0


def test_last(rig):
    pids = [p.firmware.pid for p in rig]
    if len(rig) == 2:
        (OUT / "n2.json").write_text(json.dumps(pids))
        return
    # The n2 rig was stopped when given back: no later test needs a rig of 2.
    for pid in json.loads((OUT / "n2.json").read_text()):
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
"""


def test_a_rig_no_later_test_needs_is_stopped_when_given_back(tmp_path: Path, run_root: Path) -> None:
    result = _pytest(tmp_path, run_root, {"test_early.py": EARLY_CLOSE}, "--instances", "2,3", "-q")
    assert result.returncode == 0, result.stdout[-4000:]
    assert "4 passed" in result.stdout
    counts = summary(result.stdout)
    assert (counts["started"], counts["reused"], counts["torn down"]) == (2, 2, 2), result.stdout[-2000:]
