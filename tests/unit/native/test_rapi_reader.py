"""The stand-in's RAPI reader on a real PTY, the test playing the controller: when
`rapi_connected` rises and falls and what counts in `comm_success` (firmware.md §6.1, §7.1),
as OpenEVSE_Lib's `RapiSender` does it (native/openevse_sim/rapi.py)."""

from __future__ import annotations

import asyncio
import os
import tty
from collections.abc import Awaitable, Callable, Iterator

import pytest
from openevse_sim import rapi
from openevse_sim.rapi import RapiClient, Reply, encode

Scenario = Callable[[RapiClient, int], Awaitable[None]]


@pytest.fixture
def pty_pair() -> Iterator[tuple[int, str]]:
    master, slave = os.openpty()
    tty.setraw(slave)
    path = os.ttyname(slave)
    try:
        yield master, path
    finally:
        os.close(master)
        os.close(slave)


def run(pty_pair: tuple[int, str], scenario: Scenario, events: list[list[str]] | None = None) -> None:
    master, path = pty_pair

    async def main() -> None:
        client = RapiClient(path, (events if events is not None else []).append)
        assert client.open() is None
        try:
            await scenario(client, master)
        finally:
            client.close()

    asyncio.run(asyncio.wait_for(main(), 30))


async def read_command(master: int) -> bytes:
    """The next command the client wrote, as the controller reads it."""
    loop = asyncio.get_running_loop()
    data = b""
    while not data.endswith(b"\r"):
        ready: asyncio.Future[None] = loop.create_future()

        def wake(fut: asyncio.Future[None] = ready) -> None:
            if not fut.done():
                fut.set_result(None)

        loop.add_reader(master, wake)
        try:
            await ready
        finally:
            loop.remove_reader(master)
        data += os.read(master, 256)
    return data


async def until(check: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not check():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


def test_ok_raises_connected_and_counts_a_success(pty_pair: tuple[int, str]) -> None:
    async def scenario(client: RapiClient, master: int) -> None:
        assert client.connected is False  # nothing answered yet
        task = asyncio.ensure_future(client.command("$GV"))
        assert await read_command(master) == encode("$GV")
        os.write(master, encode("$OK 8.2.3 5.2.1"))
        reply = await task
        assert reply == Reply(ok=True, tokens=["8.2.3", "5.2.1"])
        assert (client.comm_sent, client.comm_success, client.connected) == (1, 1, True)

    run(pty_pair, scenario)


def test_nk_is_an_answer_but_not_a_success(pty_pair: tuple[int, str]) -> None:
    async def scenario(client: RapiClient, master: int) -> None:
        task = asyncio.ensure_future(client.command("$SC 200 V"))
        await read_command(master)
        os.write(master, encode("$NK 80"))
        assert await task == Reply(ok=False, tokens=["80"])
        assert (client.comm_sent, client.comm_success, client.connected) == (1, 0, False)

    run(pty_pair, scenario)


def test_line_noise_lowers_connected_and_fails_the_waiting_command_at_once(
    pty_pair: tuple[int, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No `$` then nothing for 20 ms: the library gives up on the waiting command with a
    timeout right there. The reply timeout is made huge, so only the noise can end it."""
    monkeypatch.setattr(rapi, "REPLY_TIMEOUT", 60.0)

    async def scenario(client: RapiClient, master: int) -> None:
        first = asyncio.ensure_future(client.command("$GS"))
        await read_command(master)
        os.write(master, encode("$OK 1 0 1 0"))
        assert (await first) is not None
        assert client.connected
        waiting = asyncio.ensure_future(client.command("$GS"))
        await read_command(master)
        os.write(master, b"\x00\xff~~\n")
        assert await waiting is None
        assert client.connected is False
        assert (client.comm_sent, client.comm_success) == (2, 1)
        # The reader lives on: the next answer raises the flag again.
        again = asyncio.ensure_future(client.command("$GS"))
        await read_command(master)
        os.write(master, encode("$OK 1 0 1 0"))
        assert (await again) is not None
        assert (client.comm_sent, client.comm_success, client.connected) == (3, 2, True)

    run(pty_pair, scenario)


def test_a_torn_frame_lowers_connected(pty_pair: tuple[int, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rapi, "REPLY_TIMEOUT", 60.0)

    async def scenario(client: RapiClient, master: int) -> None:
        first = asyncio.ensure_future(client.command("$GV"))
        await read_command(master)
        os.write(master, encode("$OK 8.2.3 5.2.1"))
        await first
        waiting = asyncio.ensure_future(client.command("$GS"))
        await read_command(master)
        os.write(master, b"$OK 1 0")  # no `\r` ever follows
        assert await waiting is None
        assert client.connected is False

    run(pty_pair, scenario)


def test_noise_before_a_frame_in_the_same_window_is_skipped(pty_pair: tuple[int, str]) -> None:
    async def scenario(client: RapiClient, master: int) -> None:
        task = asyncio.ensure_future(client.command("$GV"))
        await read_command(master)
        os.write(master, b"\x00\r\n" + encode("$OK 8.2.3 5.2.1"))
        assert (await task) == Reply(ok=True, tokens=["8.2.3", "5.2.1"])
        assert client.connected is True

    run(pty_pair, scenario)


def test_a_silent_link_times_out_but_stays_connected(
    pty_pair: tuple[int, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No bytes at all (a cut cable, a controller that never answers): the command times out,
    `connected` keeps its value (RapiSender lowers it only when bytes came)."""
    monkeypatch.setattr(rapi, "REPLY_TIMEOUT", 0.1)

    async def scenario(client: RapiClient, master: int) -> None:
        first = asyncio.ensure_future(client.command("$GV"))
        await read_command(master)
        os.write(master, encode("$OK 8.2.3 5.2.1"))
        await first
        assert await client.command("$GS") is None
        assert await client.command("$GS") is None
        assert (client.comm_sent, client.comm_success, client.connected) == (3, 1, True)

    run(pty_pair, scenario)


def test_a_late_ok_still_counts_and_raises_connected(
    pty_pair: tuple[int, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rapi, "REPLY_TIMEOUT", 0.05)

    async def scenario(client: RapiClient, master: int) -> None:
        assert await client.command("$GS") is None  # times out: nobody answered
        await read_command(master)
        os.write(master, encode("$OK 1 0 1 0"))  # ...and now the answer comes
        await until(lambda: client.comm_success == 1, "the late $OK counted")
        assert client.connected is True

    run(pty_pair, scenario)


def test_async_events_go_to_the_handler_and_do_not_touch_the_counters(pty_pair: tuple[int, str]) -> None:
    events: list[list[str]] = []

    async def scenario(client: RapiClient, master: int) -> None:
        os.write(master, encode("$AT 02 02 32 0100"))
        await until(lambda: bool(events), "the $AT event")
        assert events == [["$AT", "02", "02", "32", "0100"]]
        assert (client.comm_success, client.connected) == (0, False)

    run(pty_pair, scenario, events)
