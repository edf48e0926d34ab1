"""`python -m bench`: measure, print the table, write bench/out/results.json and the plot."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from bench.link import link_figures, measure_link
from bench.measure import RigSample, baselines, docker_ready, run_suite, safe_measure_rig
from bench.plot import plot
from bench.report import (
    aggregate,
    evaluate_floors,
    format_table,
    git_facts,
    machine_facts,
    now_iso,
    settings_facts,
    suite_figures,
)
from bench.stats import summarize

REPO = Path(__file__).resolve().parent.parent
DOCKER_IMAGE = "openevse-harness/emulator:local"


@dataclass(frozen=True)
class Plan:
    ns: tuple[int, ...]  # time to ready, process backend
    mdns_ns: tuple[int, ...]  # convergence, on the same rigs
    docker_ns: tuple[int, ...]
    suite: tuple[tuple[int, int], ...]  # (instances, xdist workers; 1 = sequential)


FULL = Plan((1, 2, 4, 8, 16), (2, 4, 8), (1, 2, 4), ((2, 1), (3, 1), (4, 1), (2, 2), (3, 2), (4, 2)))
QUICK = Plan((1, 2, 4), (2, 4), (1, 2), ((2, 1),))
LINK_REPS = 500
QUICK_LINK_REPS = 100


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"needs a positive number, not {text}")
    return value


def _sizes_arg(text: str) -> str:
    for part in text.split(","):
        _positive(part.strip())
    return text


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--reps", type=_positive, default=None, help="repetitions per figure (default 5, quick 2)")
    p.add_argument("--quick", action="store_true", help="a short run: N = 1, 2, 4, two reps, one suite run")
    p.add_argument(
        "--suite", action=argparse.BooleanOptionalAction, default=True, help="time the integration suite"
    )
    p.add_argument(
        "--docker",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also measure the docker emulator backend (default: when an engine and the image exist)",
    )
    p.add_argument(
        "--suite-reps", type=_positive, default=1, help="runs of each suite configuration (default 1)"
    )
    p.add_argument(
        "--link",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time one RAPI round trip: direct TCP, socat bridge, python bridge (bench/link.py)",
    )
    p.add_argument(
        "--link-reps",
        type=_positive,
        default=None,
        help=f"measured round trips per link path (default {LINK_REPS}, quick {QUICK_LINK_REPS})",
    )
    p.add_argument(
        "--link-only",
        action="store_true",
        help="measure the RAPI link alone: no rigs, baselines, docker or suite (seconds, not minutes)",
    )
    p.add_argument("--ns", type=_sizes_arg, default=None, help="rig sizes for time to ready, e.g. 1,2,4,8,16")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "out", help="output directory")
    return p.parse_args(argv)


def _sizes(text: str | None, default: Sequence[int]) -> tuple[int, ...]:
    if not text:
        return tuple(default)
    return tuple(int(part) for part in text.split(",") if part.strip())


def link_reps_of(args: argparse.Namespace) -> int:
    """``--link-reps``, else fewer round trips for ``--quick`` (100) than for a full run (500)."""
    if args.link_reps is not None:
        return int(args.link_reps)
    return QUICK_LINK_REPS if args.quick else LINK_REPS


def _describe(sample: RigSample) -> str:
    bits = []
    if sample.ready_s is not None:
        bits.append(f"ready {sample.ready_s:.3f}s")
    if sample.converge_s is not None:
        bits.append(f"converged {sample.converge_s:.3f}s")
    if sample.teardown_s is not None:
        bits.append(f"teardown {sample.teardown_s:.3f}s")
    totals = [u["total"]["rss_mb"] for u in sample.usage if "total" in u]
    if totals:
        bits.append(f"rss {max(totals):.0f} MB/pair max")
    if sample.error:
        bits.append("ERROR " + sample.error.splitlines()[0][:300])
    if sample.logs:
        bits.append(f"logs kept in {sample.logs}")
    return ", ".join(bits)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    from harness.settings import Settings

    plan = QUICK if args.quick else FULL
    reps = args.reps if args.reps is not None else (2 if args.quick else 5)
    link_only = bool(args.link_only)
    link = bool(args.link) or link_only
    link_reps = link_reps_of(args)
    ns = _sizes(args.ns, plan.ns)
    mdns_ns = set(plan.mdns_ns)
    env = dict(os.environ)
    env["HARNESS_EMULATOR"] = "process"
    settings = Settings.from_env(env, cwd=REPO)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    results: dict[str, Any] = {
        "schema": 1,
        "timestamp": now_iso(),
        "quick": bool(args.quick),
        "reps": reps,
        "machine": machine_facts(),
        "git": git_facts(REPO),
        "settings": settings_facts(settings),
        "plan": {
            "ns": list(ns),
            "mdns_ns": sorted(mdns_ns),
            "poll_s": 0.05,
            "docker_ns": list(plan.docker_ns),
            "suite": [list(x) for x in plan.suite] if args.suite and not link_only else [],
            "suite_reps": args.suite_reps,
            "link_reps": link_reps if link else None,
            "link_only": link_only,
        },
    }
    samples: list[RigSample] = []
    loads: list[float] = []
    started = time.monotonic()
    interrupted = False
    if link_only:
        print(f"bench: the RAPI link only, {link_reps} round trips per path")
    else:
        print(
            f"bench: {results['settings']['firmware']}, bridge {results['settings']['bridge']}, {reps} reps"
        )
    try:
        if link_only:
            results["rigs_skipped"] = "--link-only"
        else:
            results["baselines"] = baselines(settings)
            first = safe_measure_rig(settings, 1, logs_dir=out / "rigs")
            results["cold_first_rig"] = first.to_json()
            print(f"  first rig of this process (N=1): {_describe(first)}")
            for rep in range(reps):  # rep-major, so a load spike hits every N alike
                for n in ns:
                    loads.append(os.getloadavg()[0])
                    sample = safe_measure_rig(settings, n, converge=n in mdns_ns, logs_dir=out / "rigs")
                    samples.append(sample)
                    print(f"  process N={n:>2} rep {rep + 1}/{reps}: {_describe(sample)}", flush=True)

        if link:
            loads.append(os.getloadavg()[0])
            print(f"  RAPI link: {link_reps} round trips per path ...", flush=True)
            results["link"] = {}  # filled as it goes: an interrupt keeps what was measured
            measure_link(
                settings,
                reps=link_reps,
                logs_dir=out / "rigs",
                out=results["link"],
                progress=lambda text: print(f"    {text}", flush=True),
            )
        else:
            results["link_skipped"] = "--no-link"

        docker_ns = plan.docker_ns
        want_docker = False if link_only else args.docker
        reason = (
            None if want_docker is False else docker_ready(env.get("HARNESS_EMULATOR_IMAGE") or DOCKER_IMAGE)
        )
        if want_docker is False:
            results["docker_skipped"] = "--link-only" if link_only else "--no-docker"
        elif reason is not None:
            results["docker_skipped"] = reason
            if want_docker:
                print(f"  docker asked for but unavailable: {reason}", file=sys.stderr)
        else:
            denv = dict(env, HARNESS_EMULATOR="docker")
            denv.setdefault("HARNESS_EMULATOR_IMAGE", DOCKER_IMAGE)
            dsettings = Settings.from_env(denv, cwd=REPO)
            results["docker_image"] = dsettings.emulator_image
            for rep in range(reps):
                for n in docker_ns:
                    loads.append(os.getloadavg()[0])
                    sample = safe_measure_rig(dsettings, n, memory=False, logs_dir=out / "rigs")
                    samples.append(sample)
                    print(f"  docker  N={n:>2} rep {rep + 1}/{reps}: {_describe(sample)}", flush=True)

        if args.suite and not link_only:
            results["suite"] = []
            print("  suite collection only ...", flush=True)
            results["suite_collect"] = run_suite(2, 1, cwd=REPO, log_dir=out, collect_only=True)
            for rep in range(args.suite_reps):
                for instances, workers in plan.suite:
                    loads.append(os.getloadavg()[0])
                    label = f"suite --instances {instances} -n {workers} rep {rep + 1}/{args.suite_reps}"
                    print(f"  {label} ...", flush=True)
                    run_result = run_suite(instances, workers, cwd=REPO, log_dir=out, rep=rep + 1)
                    results["suite"].append(run_result)
                    wall = run_result.get("wall_s")
                    print(
                        f"    {wall:.1f}s {run_result.get('counts')} {run_result.get('error', '')[:200]}",
                        flush=True,
                    )
        else:
            results["suite_skipped"] = "--link-only" if link_only else "--no-suite"
    except KeyboardInterrupt:
        interrupted = True
        print("bench: interrupted; writing what was measured", file=sys.stderr)

    results["interrupted"] = interrupted
    results["elapsed_s"] = time.monotonic() - started
    results["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    results["machine"]["loadavg_1min_during"] = summarize(loads)
    figures = aggregate(
        samples, cpus=results["machine"].get("cpus_usable") or results["machine"].get("cpu_count")
    )
    cold = results.get("cold_first_rig", {}).get("ready_s")
    if cold is not None:
        figures["cold_first_rig_s"] = summarize([cold])
    results["figures"] = figures
    figures["suite_wall_s"] = suite_figures(results.get("suite", []))
    if "link" in results:
        figures["link_ms"] = link_figures(results["link"])
    results["floors"] = evaluate_floors(figures)
    results["samples"] = [s.to_json() for s in samples]
    json_path = out / "results.json"
    json_path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    commit = (results["git"].get("commit") or "?")[:10]
    title = (
        f"{results['settings']['firmware']}, bridge {results['settings']['bridge']}, {reps} reps; "
        f"{results['machine']['cpu_count']} cpus, load {results['machine']['loadavg_start'][0]}; {commit}"
    )
    png = plot(figures, out / "time_vs_n.png", title) if samples else None
    print()
    print(format_table(results))
    print()
    if png:
        print(f"wrote {json_path} and {png}")
    else:
        why = "no rig was measured" if not samples else "pip install -e '.[bench]'"
        print(f"wrote {json_path} (no plot: {why})")
    return 130 if interrupted else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
