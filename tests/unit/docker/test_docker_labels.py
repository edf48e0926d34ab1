"""Labels and ownership: the only thing clean-up ever selects by."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from harness.docker import labels as L


def fake_proc(root: Path, pid: int, comm: str, starttime: str) -> Path:
    # Fields 3..21 are filler; field 22 is starttime.
    fields = ["S"] + [str(n) for n in range(4, 22)] + [starttime, "99", "100"]
    (root / str(pid)).mkdir(parents=True)
    (root / str(pid) / "stat").write_text(f"{pid} ({comm}) {' '.join(fields)}\n")
    return root


def test_start_time_is_field_22_even_with_spaces_and_parens_in_the_command(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, 4242, "evil ) name (x", "123456")
    assert L.process_start_time(4242, proc) == "123456"


def test_start_time_of_a_missing_process_is_none(tmp_path: Path) -> None:
    assert L.process_start_time(4242, tmp_path) is None


def test_start_time_of_this_process_matches_proc() -> None:
    raw = Path(f"/proc/{os.getpid()}/stat").read_text()
    assert L.process_start_time(os.getpid()) == raw.rpartition(")")[2].split()[19]


def test_container_labels_carry_session_run_instance_and_owner() -> None:
    labels = L.container_labels(session="s1", run="r1", instance="evse-s1-0", extra={"team": "x"})
    assert labels[L.SESSION] == "s1"
    assert labels[L.RUN] == "r1"
    assert labels[L.INSTANCE] == "evse-s1-0"
    assert labels[L.OWNER_PID] == str(os.getpid())
    assert labels[L.OWNER_START] == L.process_start_time(os.getpid())
    assert labels[L.OWNER_HOST] == socket.gethostname()
    assert labels["team"] == "x"


def test_extra_labels_cannot_override_ours() -> None:
    labels = L.container_labels(session="s1", run="r1", instance="i", extra={L.SESSION: "other"})
    assert labels[L.SESSION] == "s1"


def test_owner_labels_refuse_a_dead_pid(tmp_path: Path) -> None:
    with pytest.raises(ProcessLookupError):
        L.owner_labels(4242, proc=tmp_path)


def test_empty_session_filter_is_refused() -> None:
    with pytest.raises(ValueError):
        L.session_filter("")
    assert L.session_filter("abc") == {"label": "io.openevse-harness.session=abc"}


@pytest.mark.parametrize(
    ("pid", "start", "host", "alive"),
    [
        ("4242", "1000", None, True),  # running, same start time
        ("4242", "999", None, False),  # pid reused by another process
        ("4343", "1000", None, False),  # pid gone
        ("4343", "1000", "another-host", True),  # not ours to judge
        ("not-a-pid", "1000", None, True),  # unreadable: keep
    ],
)
def test_owner_is_alive(tmp_path: Path, pid: str, start: str, host: str | None, alive: bool) -> None:
    proc = fake_proc(tmp_path, 4242, "python3", "1000")
    labels = {L.OWNER_PID: pid, L.OWNER_START: start, L.OWNER_HOST: host or socket.gethostname()}
    assert L.owner_is_alive(labels, proc) is alive


def test_owner_without_labels_counts_as_alive(tmp_path: Path) -> None:
    assert L.owner_is_alive({L.OWNER_HOST: socket.gethostname()}, tmp_path) is True
