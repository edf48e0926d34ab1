"""Every knob of the harness, read once from the environment and command-line options.

One frozen object is handed to the rig, the CLI and the pytest plugin, so a run is
described by one value (printed in the pytest header and `harness up`)."""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from harness.errors import PrerequisiteMissing

STAND_IN_ARGV: tuple[str, ...] = (sys.executable, "-m", "openevse_sim")
DEFAULT_EMULATOR_ARGV: tuple[str, ...] = (sys.executable, "-m", "emulator")
BACKENDS = ("process", "docker")
BRIDGES = ("socat", "python", "auto")

# firmware.md §5.4: the real build needs >= 15 s for its first RAPI reply; 30 s leaves margin.
REAL_EVSE_LINK_TIMEOUT = 30.0
# The stand-in links in ~0.1 s, but a first $GV lost under load is retried 10 s later, as the
# real firmware does (firmware.md §6.2): the deadline must cover one retry.
STAND_IN_EVSE_LINK_TIMEOUT = 30.0
FIRMWARE_HTTP_TIMEOUT = 15.0
EMULATOR_TIMEOUT = 20.0
BRIDGE_TIMEOUT = 5.0
HELP_TIMEOUT = 10.0


def default_run_root(env: Mapping[str, str]) -> Path:
    """`HARNESS_RUN_DIR`, else `$XDG_RUNTIME_DIR/openevse-harness`, else `~/.cache/...`."""
    if env.get("HARNESS_RUN_DIR"):
        return Path(env["HARNESS_RUN_DIR"]).expanduser().absolute()
    if env.get("XDG_RUNTIME_DIR"):
        return Path(env["XDG_RUNTIME_DIR"]) / "openevse-harness"
    return Path.home() / ".cache" / "openevse-harness"


def default_port_lock_dir(env: Mapping[str, str]) -> Path:
    """`HARNESS_PORT_LOCK_DIR`, else `<default run root>/ports`, *not* under HARNESS_RUN_DIR:
    runs with different run dirs (one user's CI jobs, tests with private run dirs) must still
    see each other's port locks (engineering.md §2.a)."""
    if env.get("HARNESS_PORT_LOCK_DIR"):
        return Path(env["HARNESS_PORT_LOCK_DIR"]).expanduser().absolute()
    shared = {k: v for k, v in env.items() if k != "HARNESS_RUN_DIR"}
    return default_run_root(shared) / "ports"


def xdist_worker_index(env: Mapping[str, str]) -> int:
    """`gw3` → 3; no xdist → 0 (engineering.md §2.a)."""
    worker = env.get("PYTEST_XDIST_WORKER", "")
    digits = worker[2:] if worker.startswith("gw") else ""
    return int(digits) if digits.isdigit() else 0


@dataclass(frozen=True)
class Settings:
    """What to run and how long to wait for it."""

    firmware_argv: tuple[str, ...] = STAND_IN_ARGV
    firmware_path: Path | None = None  # the real binary, None for the stand-in
    is_stand_in: bool = True
    emulator_backend: str = "process"
    emulator_argv: tuple[str, ...] = DEFAULT_EMULATOR_ARGV
    # Our emulator prints a ready line and accepts port 0; any other command is treated as
    # upstream-compatible: fixed ports from the allocator and `GET /api/status` polling.
    emulator_is_ours: bool = True
    emulator_image: str | None = None
    run_root: Path = field(default_factory=lambda: default_run_root(os.environ))
    port_lock_dir: Path = field(default_factory=lambda: default_port_lock_dir(os.environ))
    bridge: str = "auto"
    mdns_interfaces: tuple[str, ...] | None = ("127.0.0.1",)
    firmware_http_timeout: float = FIRMWARE_HTTP_TIMEOUT
    evse_link_timeout: float = STAND_IN_EVSE_LINK_TIMEOUT
    emulator_timeout: float = EMULATOR_TIMEOUT
    bridge_timeout: float = BRIDGE_TIMEOUT
    ci: bool = False
    worker_index: int = 0
    port_base: int = 20000
    port_block: int = 200

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        cwd: Path | None = None,
        native: str | None = None,
        emulator: str | None = None,
        emulator_cmd: str | None = None,
        bridge: str | None = None,
        run_dir: str | None = None,
    ) -> Settings:
        """Read the environment; keyword arguments (command-line options) win over it.

        Raises ``PrerequisiteMissing`` for a firmware path that is missing or not executable
        (upstream W16: a relative path is resolved against ``cwd``, the caller's directory)."""
        env = dict(os.environ if env is None else env)
        base = (cwd or Path.cwd()).absolute()
        if run_dir:
            env["HARNESS_RUN_DIR"] = str((base / run_dir) if not Path(run_dir).is_absolute() else run_dir)

        native_text = native if native is not None else env.get("NATIVE_BINARY_PATH", "")
        if native_text:
            path = resolve_firmware_path(native_text, base)
            firmware_argv: tuple[str, ...] = (str(path),)
            firmware_path: Path | None = path
            stand_in = False
        else:
            firmware_argv, firmware_path, stand_in = STAND_IN_ARGV, None, True

        backend = (emulator or env.get("HARNESS_EMULATOR") or "process").strip()
        if backend not in BACKENDS:
            raise PrerequisiteMissing(
                f"unknown emulator backend {backend!r}", f"use one of: {', '.join(BACKENDS)}"
            )
        cmd_text = emulator_cmd if emulator_cmd is not None else env.get("HARNESS_EMULATOR_CMD", "")
        if cmd_text.strip():
            emulator_argv = tuple(shlex.split(cmd_text))
            ours = False
        else:
            emulator_argv, ours = DEFAULT_EMULATOR_ARGV, True

        bridge_kind = (bridge or env.get("HARNESS_BRIDGE") or "auto").strip()
        if bridge_kind not in BRIDGES:
            raise PrerequisiteMissing(f"unknown bridge {bridge_kind!r}", f"use one of: {', '.join(BRIDGES)}")

        if "HARNESS_MDNS_INTERFACES" in env:
            text = env["HARNESS_MDNS_INTERFACES"].strip()
            mdns: tuple[str, ...] | None = tuple(p.strip() for p in text.split(",") if p.strip()) or None
        else:
            mdns = ("127.0.0.1",) if stand_in else None

        return cls(
            firmware_argv=firmware_argv,
            firmware_path=firmware_path,
            is_stand_in=stand_in,
            emulator_backend=backend,
            emulator_argv=emulator_argv,
            emulator_is_ours=ours,
            emulator_image=env.get("HARNESS_EMULATOR_IMAGE") or None,
            run_root=default_run_root(env),
            port_lock_dir=default_port_lock_dir(env),
            bridge=bridge_kind,
            mdns_interfaces=mdns,
            evse_link_timeout=STAND_IN_EVSE_LINK_TIMEOUT if stand_in else REAL_EVSE_LINK_TIMEOUT,
            ci=env.get("CI", "").strip().lower() in ("1", "true", "yes"),
            worker_index=xdist_worker_index(env),
        )

    def with_(self, **changes: object) -> Settings:
        """A copy with some fields changed (tests and the CLI use it)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    # ---- checks -----------------------------------------------------------------------

    def resolved_bridge(self) -> str:
        """`socat` or `python`: auto picks socat when installed."""
        if self.bridge == "auto":
            return "socat" if shutil.which("socat") else "python"
        return self.bridge

    def check(self) -> None:
        """Everything a rig needs, before anything starts; raises ``PrerequisiteMissing``."""
        check_firmware_runs(self.firmware_argv, self.is_stand_in)
        if self.bridge == "socat" and not shutil.which("socat"):
            raise PrerequisiteMissing(
                "HARNESS_BRIDGE=socat but socat is not on PATH",
                "apt-get install socat, or unset HARNESS_BRIDGE to use the built-in Python bridge",
            )
        if self.emulator_backend == "process":
            exe = self.emulator_argv[0]
            if not (shutil.which(exe) or (Path(exe).is_file() and os.access(exe, os.X_OK))):
                raise PrerequisiteMissing(
                    f"emulator command {exe!r} (HARNESS_EMULATOR_CMD) is not executable",
                    "fix HARNESS_EMULATOR_CMD or unset it to use the built-in emulator",
                )

    def firmware_description(self) -> str:
        """One line naming the firmware under test; loud when it is the stand-in."""
        if self.is_stand_in or self.firmware_path is None:
            return "STAND-IN openevse_sim: set NATIVE_BINARY_PATH to test a real build"
        return f"{self.firmware_path} (sha256 {file_sha256(self.firmware_path)[:16]})"

    def emulator_description(self) -> str:
        if self.emulator_backend == "docker":
            return f"docker image {self.emulator_image or '(default image)'}"
        return "process: " + shlex.join(self.emulator_argv)


def resolve_firmware_path(text: str, base: Path) -> Path:
    """An absolute path to an executable file, else ``PrerequisiteMissing`` (W16)."""
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = base / path
    path = path.absolute()
    if not path.exists():
        raise PrerequisiteMissing(
            f"NATIVE_BINARY_PATH {text!r} does not exist (resolved to {path})",
            "build it with native/build-firmware.sh, or unset NATIVE_BINARY_PATH to use the stand-in",
        )
    if not path.is_file() or not os.access(path, os.X_OK):
        raise PrerequisiteMissing(
            f"NATIVE_BINARY_PATH {path} is not an executable file",
            f"chmod +x {path}, or point NATIVE_BINARY_PATH at the built program",
        )
    return path


_checked: dict[tuple[str, ...], None] = {}
_checked_lock = threading.Lock()


def check_firmware_runs(argv: tuple[str, ...], stand_in: bool) -> None:
    """Run ``argv --help`` once per process: it must exit 0 (firmware.md §5.2)."""
    with _checked_lock:
        if argv in _checked:
            return
        what = "the stand-in (python -m openevse_sim)" if stand_in else argv[0]
        try:
            proc = subprocess.run(
                [*argv, "--help"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=HELP_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PrerequisiteMissing(
                f"firmware {what} cannot run `--help`: {exc}",
                "check the binary's architecture and libraries (ldd), or rebuild it",
            ) from exc
        if proc.returncode != 0:
            err = proc.stderr.decode("utf-8", "replace").strip()[-800:]
            raise PrerequisiteMissing(
                f"firmware {what} `--help` exited {proc.returncode}: {err}",
                "missing shared libraries? run `ldd` on it; apt-get install libavahi-client3 libssl3",
            )
        _checked[argv] = None


_sha_cache: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, cached by (path, size, mtime)."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _sha_cache:
        h = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        _sha_cache[key] = h.hexdigest()
    return _sha_cache[key]
