"""Port allocator: concurrent processes get distinct ports; a dead holder's lock is released."""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
from multiprocessing.connection import Connection
from pathlib import Path

from harness.ports import PortAllocator, looks_like_address_in_use, port_is_free

BASE = 24000  # away from the harness default (20000) so a concurrent run does not matter


def _grab(lock_dir: str, worker: int, count: int, out: mp.Queue, go: mp.Event, done: mp.Event) -> None:  # type: ignore[type-arg]
    alloc = PortAllocator(Path(lock_dir), base=BASE, block=20, worker=worker)
    go.wait(10)
    leases = [alloc.acquire() for _ in range(count)]
    out.put([lease.port for lease in leases])
    done.wait(30)  # hold the leases until every process has reported
    for lease in leases:
        lease.release()


def test_concurrent_processes_get_no_duplicates(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    go, done = ctx.Event(), ctx.Event()
    # Four processes, two of them on the same "worker" block: only the locks keep them apart.
    procs = [ctx.Process(target=_grab, args=(str(tmp_path), w, 25, out, go, done)) for w in (0, 0, 1, 2)]
    for p in procs:
        p.start()
    go.set()
    try:
        results = [out.get(timeout=60) for _ in procs]
    finally:
        done.set()
        for p in procs:
            p.join(30)
    ports = [port for chunk in results for port in chunk]
    assert len(ports) == 100
    assert len(set(ports)) == 100, sorted(ports)
    assert all(BASE <= p < 32768 for p in ports)
    assert all(p.exitcode == 0 for p in procs)


def _hold_and_die(lock_dir: str, conn: Connection) -> None:
    lease = PortAllocator(Path(lock_dir), base=BASE, block=20).acquire()
    conn.send(lease.port)  # synchronous, unlike a Queue's feeder thread
    os._exit(0)  # no release: the kernel must drop the flock


def test_lock_of_a_dead_process_is_released(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_hold_and_die, args=(str(tmp_path), child))
    proc.start()
    assert parent.poll(30)
    port = parent.recv()
    proc.join(30)
    assert proc.exitcode == 0
    lease = PortAllocator(tmp_path, base=BASE, block=20).acquire()
    assert lease.port == port
    lease.release()


def test_held_lease_is_not_handed_out_twice_in_one_process(tmp_path: Path) -> None:
    alloc = PortAllocator(tmp_path, base=BASE, block=20)
    first = alloc.acquire()
    second = alloc.acquire()
    assert first.port != second.port
    first.release()
    third = alloc.acquire()
    assert third.port == first.port
    second.release()
    third.release()


def test_a_port_someone_listens_on_is_skipped(tmp_path: Path) -> None:
    alloc = PortAllocator(tmp_path, base=BASE, block=20, worker=3)
    first_candidate = alloc.candidates()[0]
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(("127.0.0.1", first_candidate))
            listener.listen()
        except OSError:
            pass  # someone else already holds it: the same precondition, a busy first candidate
        assert not port_is_free(first_candidate)
        lease = alloc.acquire()
        assert lease.port != first_candidate
        lease.release()


def test_worker_blocks_start_apart(tmp_path: Path) -> None:
    a = PortAllocator(tmp_path, base=BASE, block=50, worker=0).candidates()
    b = PortAllocator(tmp_path, base=BASE, block=50, worker=2).candidates()
    assert a[0] == BASE
    assert b[0] == BASE + 100
    assert max(a) < 32768


def test_address_in_use_detection() -> None:
    assert looks_like_address_in_use("OSError: [Errno 98] Address already in use")
    assert not looks_like_address_in_use("Connection refused")
