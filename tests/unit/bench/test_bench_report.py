"""Aggregation, floors, the table and the plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.measure import RigSample
from bench.plot import plot
from bench.report import aggregate, cpu_model, evaluate_floors, format_table, stage_share, suite_figures


def _sample(
    n: int, ready: float, teardown: float, *, backend: str = "process", rss: float = 60.0
) -> RigSample:
    stages = [{"emulator": 0.1, "bridge": 0.05, "firmware": 0.3, "evse_link": 0.05, "pair_ready": 0.5}] * n
    total = {"rss_mb": rss, "pss_mb": rss / 2, "cpu_s": 0.3, "processes": 3}
    usage = [
        {"firmware": {"rss_mb": rss - 20, "pss_mb": 10.0, "cpu_s": 0.2, "processes": 1}, "total": total}
    ] * n
    parts = [{"firmware": 0.1, "bridge": 0.0, "emulator": 0.05}] * n
    return RigSample(
        n=n,
        backend=backend,
        ready_s=ready,
        teardown_s=teardown,
        converge_s=1.0 + ready / 10 if n > 1 else None,
        rig_overhead_s=0.01,
        harness_cpu_s=0.05,
        stages=stages,
        teardown_parts=parts,
        usage=usage if backend == "process" else [],
    )


@pytest.fixture
def samples() -> list[RigSample]:
    out = [_sample(4, r, t) for r, t in ((1.0, 0.3), (1.2, 0.4), (2.0, 0.2))]
    out += [_sample(16, 5.0, 0.9, rss=110.0), _sample(2, 0.6, 0.2, backend="docker")]
    out.append(RigSample(n=16, backend="process", error="start: boom"))
    return out


def test_aggregate_summarizes_by_backend_and_n(samples: list[RigSample]) -> None:
    figures = aggregate(samples, cpus=2)
    assert figures["ready_s"]["process"]["4"]["p50"] == 1.2
    assert figures["ready_s"]["process"]["4"]["min"] == 1.0
    assert figures["ready_s"]["process"]["4"]["max"] == 2.0
    assert figures["ready_s"]["process"]["16"]["n"] == 1  # the failed rep is not a time
    assert figures["failures"] == {"process/16": 1}
    assert figures["ready_s"]["docker"]["2"]["p50"] == 0.6
    assert figures["teardown_s"]["process"]["4"]["p50"] == 0.3
    assert figures["converge_s"]["4"]["p50"] == pytest.approx(1.12)
    assert figures["rss_mb_per_pair"]["4"]["n"] == 12  # every pair of every rep
    assert figures["rss_mb_per_pair"]["all"]["max"] == 110.0
    assert "2" not in figures["rss_mb_per_pair"]  # docker pairs are not measured
    assert figures["stage_share"]["process"]["4"] == pytest.approx(
        {"emulator": 0.2, "bridge": 0.1, "firmware": 0.6, "evse_link": 0.1}
    )
    assert "2" in figures["stages_s"]["docker"]  # docker stages are split too
    assert "16" in figures["stages_s"]["process"]
    assert figures["teardown_parts_s"]["process"]["4"]["firmware"]["p50"] == 0.1
    # 4 pairs x 0.3 CPU-s + 0.05 s of the harness, over 2 CPUs
    assert figures["cpu_floor_s"]["4"] == pytest.approx(0.625)
    json.dumps(figures)  # JSON-ready


def test_stage_share_of_nothing_is_empty() -> None:
    assert stage_share({}) == {}


def test_floors_report_met_missed_and_unmeasured(samples: list[RigSample]) -> None:
    rows = {r["label"]: r for r in evaluate_floors(aggregate(samples))}
    assert rows["4 pairs ready"]["measured"] == 1.2
    assert rows["4 pairs ready"]["met"] is True
    assert rows["16 pairs ready"]["met"] is True
    assert rows["teardown of 4 pairs"]["met"] is True
    assert rows["resident memory per pair (RSS, worst)"]["met"] is False
    assert rows["discovery convergence, 4 units"]["met"] is True
    only_two = evaluate_floors(aggregate([_sample(2, 0.5, 0.1)]))
    assert {r["label"]: r["met"] for r in only_two}["16 pairs ready"] is None


def test_table_shows_figures_floors_and_suite(samples: list[RigSample]) -> None:
    figures = aggregate(samples, cpus=2)
    results = {
        "figures": figures,
        "floors": evaluate_floors(figures),
        "suite": [
            {
                "instances": 2,
                "workers": 1,
                "wall_s": 12.5,
                "counts": {"passed": 9},
                "phases_total_s": 11.0,
                "phases_by_kind_s": {"setup": 2.0, "call": 8.0, "teardown": 1.0},
            },
            {
                "instances": 3,
                "workers": 2,
                "wall_s": 30.0,
                "counts": {"failed": 1},
                "error": "pytest exited 1: 1 failed in 30s",
                "failed_tests": ["FAILED tests/integration/test_a.py::test_b - AssertionError"],
            },
        ],
        "baselines": {"python_startup_s": 0.0321, "firmware_imports_s": None},
        "machine": {"cpu_count": 2, "cpu_model": "X", "loadavg_start": [1.0], "loadavg_end": [2.0]},
    }
    table = format_table(results)
    assert "time to ready, process" in table
    assert "floor p50 <= 1.5 s: met" in table
    assert "floor max <= 100 MB: MISSED" in table
    assert (
        "--instances 2 -n 1 (run 1):    12.5s (phases 11.0s = 2.0/8.0/1.0 setup/call/teardown)  9 passed"
        in table
    )
    assert "[pytest exited 1: 1 failed in 30s]" in table
    assert "FAILED tests/integration/test_a.py::test_b" in table
    assert "N= 4: floor 0.625 s, measured 1.200 s" in table
    assert "firmware    90.0 /  10.0 MB, 0.200 s" in table  # 16 of 28 pairs at 90
    assert "failed repetitions" in table
    assert "baselines (fastest of 3; spawn: median): python_startup 32.1 ms" in table
    assert "N= 4: emulator 20.0%" in table


def test_cpu_model() -> None:
    assert cpu_model("processor\t: 0\nmodel name\t: Intel(R) Xeon(R)\n") == "Intel(R) Xeon(R)"
    assert cpu_model("") is None


def test_plot_writes_a_png(samples: list[RigSample], tmp_path: Path) -> None:
    path = plot(aggregate(samples), tmp_path / "p.png", "title")
    assert path is not None
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_suite_figures_summarize_each_configuration() -> None:
    runs: list[dict[str, Any]] = [
        {"instances": 2, "workers": 1, "wall_s": 30.0},
        {"instances": 2, "workers": 1, "wall_s": 34.0},
        {"instances": 2, "workers": 2, "wall_s": 16.0},
        {"instances": 3, "workers": 2, "wall_s": 99.0, "error": "timed out after 99s"},
        {"instances": 4, "workers": 2, "error": "tests/integration does not exist"},
    ]
    figures = suite_figures(runs)
    assert set(figures) == {"n2-w1", "n2-w2"}
    assert figures["n2-w1"]["p50"] == 32.0
    assert figures["n2-w1"]["n"] == 2


def test_command_line_rejects_non_positive_counts() -> None:
    from bench.__main__ import parse_args

    args = parse_args(["--quick", "--reps", "3", "--ns", "1,4", "--no-suite", "--suite-reps", "2"])
    assert (args.quick, args.reps, args.ns, args.suite, args.suite_reps, args.docker) == (
        True,
        3,
        "1,4",
        False,
        2,
        None,
    )
    for bad in (["--reps", "0"], ["--ns", "1,-2"], ["--suite-reps", "x"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
