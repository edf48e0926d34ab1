"""``harness image build``: a runnable emulator image without any registry.

No registry is reachable from our CI machines, so ``FROM python:3.11-slim`` cannot work and
neither can ``docker pull`` of the upstream emulator. Two steps instead:

1. Base ``openevse-harness/python-base:bookworm`` (only when missing, or ``--rebuild-base``):
   ``debootstrap --variant=minbase --include=python3 bookworm <private tmp dir> <Debian mirror>``
   makes a Debian root filesystem with python3 from the Debian mirror (a package registry we
   may use), docs and apt lists are dropped, then ``tar -C <dir> -c . | docker import - TAG``
   turns it into an image (two processes joined by a pipe; no shell). Needs root and the
   ``debootstrap`` package. Measured: ~45 s (debootstrap ~42 s, import ~2.5 s), ~160 MB.
2. Emulator ``openevse-harness/emulator:local`` from ``emulator/Dockerfile`` with
   ``emulator/`` as the context and the base passed as the build ARG ``BASE_IMAGE``, built
   with the Docker SDK (the engine's legacy builder; no BuildKit/buildx needed). The image is
   labelled with a content hash of ``emulator/`` and the base image id, so a run rebuilds only
   when the emulator (or the base) changed; ``--force`` rebuilds anyway. Under 1 s.

Use it: ``HARNESS_EMULATOR_IMAGE=openevse-harness/emulator:local`` (what ``.ci/run`` does).
Where a registry is reachable, ``docker pull ghcr.io/jeremypoulter/openevse_emulator:<tag>``
gives the upstream emulator instead.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from docker.errors import APIError, BuildError, DockerException, ImageNotFound

from harness.docker import labels as L
from harness.docker.engine import connect
from harness.docker.names import BASE_IMAGE, LOCAL_IMAGE
from harness.errors import HarnessError, PrerequisiteMissing
from harness.waiting import tail

DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SUITE = "bookworm"
# Not needed at run time; dropping them makes the base ~20% smaller.
TRIM = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "var/lib/apt/lists")
IGNORED_DIRS = {"__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
IGNORED_SUFFIXES = (".pyc", ".pyo")


def say(message: str) -> None:
    print(f"harness image build: {message}", flush=True)  # noqa: T201 - this is a CLI


def emulator_dir() -> Path:
    """The ``emulator`` package directory (holds the Dockerfile)."""
    spec = importlib.util.find_spec("emulator")
    if spec is None or spec.origin is None:
        raise PrerequisiteMissing("the emulator package is not importable", "run from the repository root")
    return Path(spec.origin).parent


def context_files(context: Path) -> Iterator[Path]:
    """Files that go into the build context (as emulator/.dockerignore says), sorted."""
    for root, dirs, files in os.walk(context):
        dirs[:] = sorted(d for d in dirs if d not in IGNORED_DIRS)
        for name in sorted(files):
            if not name.endswith(IGNORED_SUFFIXES):
                yield Path(root) / name


def content_hash(context: Path) -> str:
    """sha256 over relative paths, exec bits and contents of the context's files."""
    digest = hashlib.sha256()
    for path in context_files(context):
        rel = path.relative_to(context).as_posix()
        executable = os.access(path, os.X_OK)
        digest.update(f"{rel}\0{int(executable)}\0".encode())
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def _image(client: Any, tag: str) -> Any | None:
    try:
        return client.images.get(tag)
    except ImageNotFound:
        return None


def _mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` (debootstrap may leave /proc, /sys or /dev binds)."""
    prefix = str(path.resolve())
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return sorted(found, key=len, reverse=True)


def remove_private_tree(path: Path) -> None:
    """Remove our temp dir, first unmounting anything debootstrap left mounted inside it.

    Removing a tree with the host's /dev bind-mounted inside would delete host device nodes,
    so when a mount cannot be undone the tree is left in place and reported."""
    for point in _mounts_under(path):
        subprocess.run(["umount", "--lazy", point], check=False, capture_output=True)
    left = _mounts_under(path)
    if left:
        say(f"not removing {path}: still mounted inside: {', '.join(left)}")
        return
    shutil.rmtree(path, ignore_errors=True)


def build_base(client: Any, tag: str, *, suite: str, mirror: str) -> float:
    """debootstrap + docker import; returns the seconds it took."""
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        raise PrerequisiteMissing("debootstrap is missing", "sudo apt-get install debootstrap")
    if os.geteuid() != 0:
        raise PrerequisiteMissing("debootstrap needs root", "run `sudo harness image build`")
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="openevse-harness-rootfs-"))  # 0700
    rootfs = tmp / "rootfs"
    log_path = tmp / "debootstrap.log"
    try:
        argv = [debootstrap, "--variant=minbase", "--include=python3", suite, str(rootfs), mirror]
        say(f"base {tag}: {' '.join(argv)} (about a minute)")
        with log_path.open("wb") as log:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            raise HarnessError(
                f"debootstrap failed with exit code {done.returncode}; last log lines:\n{tail(log_path)}"
            )
        say(f"base {tag}: rootfs ready in {time.monotonic() - started:.1f}s; importing")
        for rel in TRIM:
            target = rootfs / rel
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
                target.mkdir()
        _import_rootfs(rootfs, tag, tmp)
    finally:
        remove_private_tree(tmp)
    elapsed = time.monotonic() - started
    image = client.images.get(tag)
    say(f"base {tag}: built in {elapsed:.1f}s ({image.short_id}, {image.attrs.get('Size', 0) / 1e6:.0f} MB)")
    return elapsed


def _import_rootfs(rootfs: Path, tag: str, tmp: Path) -> None:
    """``tar -C rootfs -c . | docker import - tag``, a pipe between two processes."""
    if shutil.which("docker") is None:
        raise PrerequisiteMissing("the docker client is missing", "sudo apt-get install docker.io")
    tar_err = tmp / "tar.log"
    import_log = tmp / "import.log"
    changes = [
        "--change",
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "--change",
        "ENV LANG=C.UTF-8",
        "--change",
        "LABEL io.openevse-harness.built-by=harness-image-build",
    ]
    with tar_err.open("wb") as terr, import_log.open("wb") as ilog:
        tar = subprocess.Popen(
            ["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE, stderr=terr
        )
        assert tar.stdout is not None
        try:
            importer = subprocess.Popen(
                ["docker", "import", *changes, "-", tag], stdin=tar.stdout, stdout=ilog, stderr=ilog
            )
        finally:
            tar.stdout.close()  # only the importer reads it now; tar sees EPIPE if it dies
        import_rc = importer.wait()
        tar_rc = tar.wait()
    if tar_rc != 0 or import_rc != 0:
        raise HarnessError(
            f"tar | docker import failed (tar {tar_rc}, docker import {import_rc}):\n"
            f"{tail(tar_err)}\n{tail(import_log)}"
        )


def build_emulator(client: Any, tag: str, *, base: Any, base_tag: str, context: Path, force: bool) -> float:
    """Build the emulator image unless one with the same content hash and base exists."""
    digest = content_hash(context)
    wanted = {L.EMULATOR_HASH: digest, L.BASE_IMAGE_ID: str(base.id)}
    current = _image(client, tag)
    if current is not None and not force:
        have = current.labels or {}
        if all(have.get(k) == v for k, v in wanted.items()):
            say(f"emulator {tag}: up to date ({current.short_id}, content {digest[:12]}); --force rebuilds")
            return 0.0
    started = time.monotonic()
    say(f"emulator {tag}: building from {context / 'Dockerfile'} (content {digest[:12]}, base {base_tag})")
    try:
        image, logs = client.images.build(
            path=str(context),
            dockerfile="Dockerfile",
            tag=tag,
            buildargs={"BASE_IMAGE": base_tag},
            labels=wanted,
            rm=True,
            forcerm=True,
            pull=False,
            nocache=force,
        )
    except BuildError as exc:
        lines = "".join(str(chunk.get("stream", chunk.get("error", ""))) for chunk in exc.build_log)
        raise HarnessError(f"docker build of {tag} failed: {exc.msg}\n{lines[-3000:]}") from exc
    for chunk in logs:
        text = str(chunk.get("stream", "")).rstrip()
        if text.startswith("Step "):
            say(f"  {text}")
    elapsed = time.monotonic() - started
    say(f"emulator {tag}: built in {elapsed:.1f}s ({image.short_id})")
    if current is not None and current.id != image.id:
        _remove_if_untagged(client, current.id)  # the previous build of our tag
    return elapsed


def _remove_if_untagged(client: Any, image_id: str) -> None:
    """Drop an image this command replaced, but only once no tag names it any more.

    Removing by id would also untag every other tag of that image in the same repository
    (an identical build under another tag shares the id), so tagged images are kept, as are
    images something still uses."""
    with contextlib.suppress(APIError, DockerException):
        if not client.images.get(image_id).tags:
            client.images.remove(image_id, noprune=False)


def build_main(argv: list[str] | None = None) -> int:
    """Entry point of ``harness image build``; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="harness image build",
        description="Build the emulator image offline (debootstrap base + emulator/Dockerfile).",
    )
    parser.add_argument("--tag", default=LOCAL_IMAGE, help=f"emulator image tag (default {LOCAL_IMAGE})")
    parser.add_argument("--base-tag", default=BASE_IMAGE, help=f"base image tag (default {BASE_IMAGE})")
    parser.add_argument("--rebuild-base", action="store_true", help="remake the debootstrap base")
    parser.add_argument("--force", action="store_true", help="rebuild the emulator image even if unchanged")
    parser.add_argument("--mirror", default=DEFAULT_MIRROR, help=f"Debian mirror (default {DEFAULT_MIRROR})")
    parser.add_argument("--suite", default=DEFAULT_SUITE, help=f"Debian suite (default {DEFAULT_SUITE})")
    parser.add_argument("--context", type=Path, default=None, help="emulator dir (default: the package)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        with _build_lock():
            return _build(args, started)
    except PrerequisiteMissing as exc:
        print(f"harness image build: {exc.what}\n  fix: {exc.fix}", file=sys.stderr)  # noqa: T201
        return 2
    except (HarnessError, DockerException) as exc:
        print(f"harness image build: failed: {exc}", file=sys.stderr)  # noqa: T201
        return 1


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    """One build at a time per host (pytest-xdist workers, parallel CI jobs): the second
    waits, then finds the images up to date. The kernel drops the lock if we die."""
    path = Path(tempfile.gettempdir()) / f"openevse-harness-image-build-{os.geteuid()}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"another image build holds {path}; waiting for it")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _build(args: argparse.Namespace, started: float) -> int:
    client = connect()
    context = args.context or emulator_dir()
    if not (context / "Dockerfile").is_file():
        raise PrerequisiteMissing(f"no Dockerfile in {context}", "pass --context <emulator dir>")
    base = _image(client, args.base_tag)
    base_seconds = 0.0
    previous_base = base
    if base is None or args.rebuild_base:
        base_seconds = build_base(client, args.base_tag, suite=args.suite, mirror=args.mirror)
        base = client.images.get(args.base_tag)
    else:
        say(f"base {args.base_tag}: present ({base.short_id}); --rebuild-base remakes it")
    emu_seconds = build_emulator(
        client, args.tag, base=base, base_tag=args.base_tag, context=context, force=args.force
    )
    if previous_base is not None and previous_base.id != base.id:
        _remove_if_untagged(client, previous_base.id)  # our replaced base
    say(
        f"done in {time.monotonic() - started:.1f}s (base {base_seconds:.1f}s, emulator {emu_seconds:.1f}s); "
        f"use it with HARNESS_EMULATOR_IMAGE={args.tag}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(build_main())
