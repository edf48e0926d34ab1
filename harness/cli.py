"""`harness`: the same rig the pytest plugin uses, from a terminal (engineering.md §2.d).

    harness up N [--emulator process|docker] [--native PATH] [--bridge B] [--json]
    harness status | down [SESSION] | logs I [--session S] [--follow] | doctor | image build

`up` stays in the foreground: progress on stderr while starting, then a table (or one JSON
document with `--json`) on stdout, then it waits. The first SIGINT/SIGTERM tears down in
order and exits 130/143; a second one kills everything at once."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from harness.errors import HarnessError, PrerequisiteMissing
from harness.rig import Rig
from harness.runstate import SessionInfo, list_sessions, reap_session, same_process, wait_for_gone
from harness.settings import Settings, default_run_root

EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(
        native=getattr(args, "native", None),
        emulator=getattr(args, "emulator", None),
        bridge=getattr(args, "bridge", None),
    )


# ---- up ----------------------------------------------------------------------------------


class _Stopper:
    """Signal handling for `up`: first signal → orderly stop, second → force."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum: int | None = None
        self.rig: Rig | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
            self.event.set()
            if self.rig is not None:
                self.rig.abort()
            return
        _err("second signal: killing everything now")
        code = EXIT_SIGNAL.get(signal.Signals(self.signum), 1)
        if self.rig is not None:
            self.rig.kill()
            state = self.rig.state
            if state is not None:
                snapshot = state.snapshot()
                state.freeze()  # teardown threads still running must not rewrite the dir
                reap_session(SessionInfo(self.rig.session, state.dir, snapshot))
        os._exit(code)


def _table(summary: dict[str, Any]) -> str:
    lines = [
        f"session {summary['session']}  (owner pid {summary['owner_pid']}, run dir {summary['run_dir']})",
        f"firmware: {summary['firmware']}",
        f"emulator: {summary['emulator']}   bridge: {summary['bridge']}",
        f"ready in {summary['start_seconds']:.2f}s",
        "",
    ]
    for inst in summary["instances"]:
        lines += [
            f"[{inst['index']}] {inst['hostname']}  chip id {inst['chip_id']} (id {inst['long_id']})",
            f"    firmware  {inst['firmware_url']}",
            f"    emulator  {inst['emulator_url']}",
            f"    PTY       {inst['pty_path']}",
        ]
        lines += [f"    log       {name}: {path}" for name, path in inst["logs"].items()]
    lines += ["", "Ctrl-C to stop (twice to force)."]
    return "\n".join(lines)


def cmd_up(args: argparse.Namespace) -> int:
    if args.n < 1:
        _err("harness up: N must be at least 1")
        return 2
    settings = _settings(args)
    if settings.is_stand_in:
        _err("!!! firmware: " + settings.firmware_description())
    stopper = _Stopper()
    previous = {s: signal.signal(s, stopper) for s in EXIT_SIGNAL}
    try:
        rig = Rig(settings, args.n, progress=_err, kind="cli")
        stopper.rig = rig
        try:
            rig.start()
        except HarnessError as exc:
            _err(f"harness up failed: {exc}")
            return EXIT_SIGNAL.get(signal.Signals(stopper.signum), 1) if stopper.signum else 1
        summary = rig.summary()
        if args.json:
            print(json.dumps(summary), flush=True)
        else:
            print(_table(summary), flush=True)
        reported: set[str] = set()
        while stopper.signum is None and not stopper.event.wait(0.5):
            for problem in rig.problems():
                if problem not in reported:
                    reported.add(problem)
                    _err(f"warning: {problem} (see `harness logs`)")
        _err("stopping… (Ctrl-C again to force)")
        t0 = time.monotonic()
        try:
            rig.close()
        except HarnessError as exc:
            _err(f"teardown problems: {exc}")
            return 1
        _err(f"stopped in {time.monotonic() - t0:.2f}s")
        assert stopper.signum is not None
        return EXIT_SIGNAL.get(signal.Signals(stopper.signum), 1)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# ---- status / down / logs ------------------------------------------------------------------


def _run_root() -> Path:
    return default_run_root(os.environ)


def cmd_status(args: argparse.Namespace) -> int:
    sessions = list_sessions(_run_root())
    if args.json:
        print(json.dumps([_session_doc(s) for s in sessions]))
        return 1 if args.check_empty and sessions else 0
    if not sessions:
        print(f"no sessions under {_run_root()}")
        return 0
    if args.check_empty:
        print(f"{len(sessions)} session(s) left under {_run_root()}:")
    for info in sessions:
        doc = _session_doc(info)
        owner = "alive" if doc["owner_alive"] else "DEAD (reap with `harness down`)"
        print(f"session {info.session}  owner pid {info.owner_pid} {owner}  kind {doc['kind']}  {info.dir}")
        for inst in doc["instances"]:
            print(f"  [{inst.get('index')}] {inst.get('hostname')}  {inst.get('firmware_url')}  "
                  f"emulator {inst.get('emulator_url')}")  # fmt: skip
    return 1 if args.check_empty else 0


def _session_doc(info: SessionInfo) -> dict[str, Any]:
    instances = info.data.get("instances", {})
    return {
        "session": info.session,
        "dir": str(info.dir),
        "owner_pid": info.owner_pid,
        "owner_alive": info.owner_alive(),
        "kind": info.data.get("kind", "?"),
        "children": info.data.get("children", {}),
        "instances": [instances[k] for k in sorted(instances, key=int)],
    }


def cmd_down(args: argparse.Namespace) -> int:
    sessions = list_sessions(_run_root())
    if args.session:
        sessions = [s for s in sessions if s.session == args.session]
        if not sessions:
            _err(f"no session {args.session!r} under {_run_root()}")
            return 1
    status = 0
    for info in sessions:
        if not info.owner_alive():
            for line in reap_session(info):
                print(f"{info.session}: {line}")
            continue
        # A live owner tears down its own rig. Without a SESSION argument only `harness up`
        # owners are asked: a running pytest session is not ours to stop.
        if not args.session and info.data.get("kind") != "cli":
            print(f"{info.session}: owner pid {info.owner_pid} ({info.data.get('kind')}) alive; left alone")
            continue
        if not same_process(info.owner_pid, info.data.get("owner_start")):
            continue
        os.kill(info.owner_pid, signal.SIGTERM)
        print(f"{info.session}: asked owner pid {info.owner_pid} to stop")
        owner_gone = Path(f"/proc/{info.owner_pid}")
        # Done means the owner has exited too, not only that its session dir is gone.
        if wait_for_gone([info.dir, owner_gone], args.timeout) or not info.owner_alive():
            print(f"{info.session}: stopped")
        else:
            _err(f"{info.session}: owner pid {info.owner_pid} did not finish in {args.timeout:.0f}s")
            status = 1
    for line in _reap_orphan_containers():
        print(line)
    return status


def _reap_orphan_containers() -> list[str]:
    """Containers of dead owners whose session dir is gone too (e.g. another run dir).

    Only when a Docker engine answers; the process backend needs no Docker at all."""
    try:
        from harness.docker.engine import default_client
        from harness.docker.reaper import reap_dead_owner_containers

        client = default_client()
        client.ping()
    except Exception:  # no SDK config, no engine: nothing of ours can be running there
        return []
    lines: list[str] = []
    reap_dead_owner_containers(client, report=lines.append)
    return lines


def _pick_session(name: str | None) -> SessionInfo:
    sessions = list_sessions(_run_root())
    if name:
        sessions = [s for s in sessions if s.session == name]
    else:
        sessions = [s for s in sessions if s.owner_alive()] or sessions
    if not sessions:
        raise HarnessError(f"no session{' ' + name if name else ''} under {_run_root()}")
    return max(sessions, key=lambda s: float(s.data.get("created", 0)))


def cmd_logs(args: argparse.Namespace) -> int:
    info = _pick_session(args.session)
    inst = info.data.get("instances", {}).get(str(args.index))
    if inst is None:
        raise HarnessError(f"session {info.session} has no instance {args.index}")
    parts = ["firmware", "bridge", "emulator"] if args.part == "all" else [args.part]
    paths = [Path(inst["logs"][p]) for p in parts if p in inst.get("logs", {})]
    offsets: dict[Path, int] = {}
    for path in paths:
        print(f"==> {path} <==")
        offsets[path] = _dump(path, 0)
    while args.follow and info.dir.exists():
        time.sleep(0.2)  # a terminal follow loop, not a test wait
        for path in paths:
            offsets[path] = _dump(path, offsets[path])
    return 0


def _dump(path: Path, offset: int) -> int:
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except OSError:
        return offset
    sys.stdout.write(data.decode("utf-8", "replace"))
    sys.stdout.flush()
    return offset + len(data)


# ---- doctor / image ------------------------------------------------------------------------


def cmd_doctor(args: argparse.Namespace) -> int:
    from harness.doctor import run_doctor

    return run_doctor(verbose=True)


def cmd_image(args: argparse.Namespace) -> int:
    if args.action != "build":
        _err(f"unknown image action {args.action!r}; try `harness image build`")
        return 2
    from harness.docker.image import build_main

    return build_main(list(args.rest))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harness", description="OpenEVSE multi-instance test harness")
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start N emulator+firmware pairs and wait (Ctrl-C stops)")
    up.add_argument("n", type=int, help="number of pairs")
    up.add_argument("--emulator", choices=["process", "docker"], help="emulator backend")
    up.add_argument("--native", metavar="PATH", help="firmware binary (default: $NATIVE_BINARY_PATH)")
    up.add_argument("--bridge", choices=["socat", "python", "auto"], help="serial bridge")
    up.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    up.set_defaults(func=cmd_up)

    st = sub.add_parser("status", help="sessions under the run dir, owners alive or dead")
    st.add_argument("--json", action="store_true")
    st.add_argument("--check-empty", action="store_true", help="exit 1 if any session is left (for CI)")
    st.set_defaults(func=cmd_status)

    down = sub.add_parser("down", help="stop live `harness up` sessions, reap dead owners' sessions")
    down.add_argument("session", nargs="?")
    down.add_argument("--timeout", type=float, default=30.0)
    down.set_defaults(func=cmd_down)

    logs = sub.add_parser("logs", help="print an instance's logs")
    logs.add_argument("index", type=int)
    logs.add_argument("--session")
    logs.add_argument("--part", choices=["all", "firmware", "bridge", "emulator"], default="all")
    logs.add_argument("--follow", "-f", action="store_true")
    logs.set_defaults(func=cmd_logs)

    doc = sub.add_parser("doctor", help="check prerequisites and print a fix for each problem")
    doc.set_defaults(func=cmd_doctor)

    img = sub.add_parser("image", help="Docker image of the emulator")
    img.add_argument("action", choices=["build"])
    img.add_argument("rest", nargs=argparse.REMAINDER)
    img.set_defaults(func=cmd_image)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except PrerequisiteMissing as exc:
        _err(f"missing prerequisite: {exc}")
        return 1
    except HarnessError as exc:
        _err(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
