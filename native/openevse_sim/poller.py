"""Peer poller (firmware.md §3.1 to §3.3): bootstrap `GET /status`, identity from `GET /config`,
live feed over the peer's `/ws`, exponential backoff, heartbeat-timeout staleness.

One task per joined non-local entry, keyed by its `host`; a host rename ends the old task
and a new one starts for the new key (§3.1)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from openevse_sim.tasks import spawn

if TYPE_CHECKING:
    import aiohttp

    from openevse_sim.config import Config
    from openevse_sim.outbound import Outbound
    from openevse_sim.peers import Peer, PeerGroup

LOOP_PERIOD = 0.5
HTTP_TIMEOUT = 10.0
WS_CONNECT_TIMEOUT = 10.0
WS_PING = 15.0
BACKOFF_CAP = 60.0


class PeerFailure(Exception):
    pass


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"non-finite number {text}")
    return value


def _reject(name: str) -> Any:
    raise ValueError(f"not JSON: {name}")


def loads_strict(data: str | bytes) -> Any:
    """Peer JSON without NaN/Infinity, so nothing we re-publish becomes invalid JSON."""
    return json.loads(data, parse_float=_finite, parse_constant=_reject)


def ws_url(base: str) -> str:
    if base.startswith("https://"):
        return "wss://" + base[len("https://") :].rstrip("/") + "/ws"
    return "ws://" + base.removeprefix("http://").rstrip("/") + "/ws"


class Poller:
    def __init__(self, peers: PeerGroup, config: Config, outbound: Outbound) -> None:
        self.peers = peers
        self.config = config
        self.outbound = outbound
        self.tasks: dict[str, asyncio.Task[None]] = {}
        # Open live-feed sockets by host key: the controller's "online" test and its send path (§3.4).
        self.sockets: dict[str, aiohttp.ClientWebSocketResponse] = {}
        self.on_open: Callable[[str], None] | None = None  # a peer's WebSocket just opened (§3.4 push)
        self._wake = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.peers.listeners.append(self._wake.set)
        self._supervisor = spawn(self._supervise(), "poller")

    async def stop(self) -> None:
        tasks = [t for t in (self._supervisor, *self.tasks.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    async def _supervise(self) -> None:
        while True:
            wanted = {p.host for p in self.peers.joined()}
            for host in list(self.tasks):
                if host not in wanted or self.tasks[host].done():
                    self.tasks.pop(host).cancel()
            for host in wanted - set(self.tasks):
                self.tasks[host] = spawn(self._peer_loop(host), f"poll {host}")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), LOOP_PERIOD)

    def is_open(self, host: str) -> bool:
        """§3.4: a polled peer is online for the controller iff its WebSocket is open now."""
        sock = self.sockets.get(host)
        return sock is not None and not sock.closed and self._current(host) is not None

    async def send(self, host: str, text: str) -> bool:
        """A text frame on the peer's open live-feed socket (the controller's allocation frame)."""
        sock = self.sockets.get(host)
        if sock is None or sock.closed:
            return False
        try:
            await sock.send_str(text)
        except (ConnectionError, RuntimeError) as exc:
            print(f"DBUG: Peer {host}: send failed: {exc!r}", flush=True)
            return False
        return True

    def _current(self, host: str) -> Peer | None:
        peer = self.peers.find(host)
        return peer if peer is not None and peer.joined else None

    async def _peer_loop(self, host: str) -> None:
        failures = 0
        identified = False
        while (peer := self._current(host)) is not None:
            try:
                await self._bootstrap(peer)
                failures = 0
                if not identified:
                    identified = await self._identify(peer)
                await self._live(peer)  # returns on stale/close: reconnect at once
            except Exception as exc:  # unreachable peer, bad JSON, aiohttp errors: back off, keep going
                failures += 1
                delay = min(BACKOFF_CAP, 2.0 ** (failures - 1))
                print(f"DBUG: Peer {host}: {exc!r}; retry in {delay:.0f} s", flush=True)
                await asyncio.sleep(delay)

    async def _get_json(self, url: str) -> dict[str, Any]:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT)
        async with self.outbound.session().get(url, timeout=timeout) as resp:
            if resp.status != 200:
                raise PeerFailure(f"GET {url} -> {resp.status}")
            doc = loads_strict(await resp.read())
        if not isinstance(doc, dict):
            raise PeerFailure(f"GET {url}: not a JSON object")
        return doc

    async def _bootstrap(self, peer: Peer) -> None:
        peer.merge_status(await self._get_json(f"{peer.base_url()}/status"))

    async def _identify(self, peer: Peer) -> bool:
        """Once after the first good bootstrap: id from `wifi_serial`, name from `hostname` (§3.2)."""
        try:
            doc = await self._get_json(f"{peer.base_url()}/config")
        except Exception as exc:
            print(f"DBUG: Peer {peer.host}: identity fetch failed: {exc!r}", flush=True)
            return False
        serial, hostname = doc.get("wifi_serial"), doc.get("hostname")
        learned = False
        if isinstance(serial, str) and serial and peer.id != serial.lower():
            peer.id = serial.lower()
            learned = True
        if isinstance(hostname, str) and hostname and not peer.name:
            peer.name = hostname
        if learned:
            self.peers.changed(persist=True)
        return True

    async def _live(self, peer: Peer) -> None:
        import aiohttp

        session = self.outbound.session()
        url = ws_url(peer.base_url())
        async with session.ws_connect(
            url,
            timeout=aiohttp.ClientWSTimeout(ws_close=1.0),
            heartbeat=WS_PING,
            max_msg_size=1 << 20,
        ) as sock:
            self.sockets[peer.host] = sock
            try:
                if self.on_open is not None:
                    self.on_open(peer.host)
                await self._read_frames(peer, sock)
            finally:
                if self.sockets.get(peer.host) is sock:
                    del self.sockets[peer.host]

    async def _read_frames(self, peer: Peer, sock: aiohttp.ClientWebSocketResponse) -> None:
        import aiohttp

        while self._current(peer.host) is peer:
            last = peer.last_rx or 0.0
            if time.monotonic() - last > self.config.heartbeat_timeout:
                quiet = self.config.heartbeat_timeout
                print(f"DBUG: Peer {peer.host}: no status for {quiet:.0f} s, reconnecting", flush=True)
                return
            try:
                frame = await sock.receive(timeout=LOOP_PERIOD)
            except TimeoutError:
                continue
            if frame.type == aiohttp.WSMsgType.TEXT:
                with contextlib.suppress(ValueError):
                    doc = loads_strict(frame.data)
                    if isinstance(doc, dict):
                        peer.merge_status(doc)
            elif frame.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                raise PeerFailure("WebSocket closed")
