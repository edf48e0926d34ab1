"""mDNS advertisement and discovery sweeps (firmware.md §2).

Models the fixed discovery of upstream PR #1219: sweeps browse `_openevse._tcp` (the branch
tip queries `openevse.tcp` and finds nothing). python-zeroconf is bound only to the addresses
in `OPENEVSE_SIM_MDNS_INTERFACES` (default 127.0.0.1), IPv4 only, so nothing leaves loopback."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from openevse_sim import BUILD_ENV, VERSION

if TYPE_CHECKING:
    from openevse_sim.config import Config
    from openevse_sim.identity import Identity
    from openevse_sim.peers import PeerGroup

SERVICE = "_openevse._tcp.local."
SWEEP_PERIOD = 10.0  # after the previous sweep start (§2.3)
DEFAULT_WINDOW = 1.0  # how long a sweep collects answers; the real query runs up to 5 s
RESOLVE_TIMEOUT_MS = 1000
MAX_RESULTS = 20


@dataclass(frozen=True)
class Result:
    instance: str
    ip: str
    server: str
    port: int
    txt: dict[str, str]


def _txt(properties: dict[bytes, bytes | None]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in properties.items():
        text = (value or b"").decode("utf-8", "replace").strip('"')
        out[key.decode("utf-8", "replace").strip('"')] = text
    return out


class Discovery:
    def __init__(
        self, config: Config, identity: Identity, peers: PeerGroup, interfaces: list[str], env: dict[str, str]
    ) -> None:
        self.config = config
        self.identity = identity
        self.peers = peers
        self.interfaces = interfaces
        try:
            self.window = float(env.get("OPENEVSE_SIM_SWEEP_SECONDS", DEFAULT_WINDOW))
        except ValueError:
            self.window = DEFAULT_WINDOW
        self._trigger = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._azc: Any = None
        self._info: Any = None
        self._in_flight = False

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._run()))

    def trigger(self) -> None:
        """`POST /loadsharing/discover`: sweep now, or right after the one in flight (§2.3)."""
        self._trigger.set()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        if self._azc is not None:
            if self._info is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._azc.async_unregister_service(self._info), 0.4)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._azc.async_close(), 0.3)

    async def _run(self) -> None:
        from zeroconf import IPVersion
        from zeroconf.asyncio import AsyncZeroconf

        try:
            self._azc = AsyncZeroconf(interfaces=self.interfaces, ip_version=IPVersion.V4Only)
        except Exception as exc:  # like the Avahi client failing: no mDNS, everything else runs (§2.1)
            print(f"Failed to create mDNS responder: {exc!r}", flush=True)
            return
        self._tasks.append(asyncio.get_running_loop().create_task(self._advertise()))
        next_at = time.monotonic()
        while True:
            delay = next_at - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._trigger.wait(), delay)
            self._trigger.clear()
            next_at = time.monotonic() + SWEEP_PERIOD
            await self._sweep()

    async def _advertise(self) -> None:
        """`_openevse._tcp`, instance = hostname, port = www_http_port, four TXT keys (§2.1)."""
        from zeroconf import NonUniqueNameException
        from zeroconf.asyncio import AsyncServiceInfo

        hostname = self.config.hostname
        self._info = AsyncServiceInfo(
            SERVICE,
            f"{hostname}.{SERVICE}",
            addresses=[socket.inet_aton(self.interfaces[0])],
            port=self.config.http_port,
            properties={"type": BUILD_ENV, "version": VERSION, "id": self.identity.long_id, "ssl": "0"},
            server=f"{hostname}.local.",
        )
        try:
            # No probing: announce at once so peers see us within a sweep of start-up.
            await self._azc.async_register_service(self._info, cooperating_responders=True)
        except NonUniqueNameException:
            print(f"mDNS: name collision for '{hostname}', not published", flush=True)
            self._info = None
        except Exception as exc:
            print(f"mDNS: registration failed: {exc!r}", flush=True)
            self._info = None

    async def _sweep(self) -> None:
        from zeroconf import IPVersion, ServiceStateChange
        from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo

        started = time.monotonic()
        names: set[str] = set()

        def on_change(zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
            if state_change is ServiceStateChange.Removed:
                names.discard(name)
            else:
                names.add(name)

        browser = AsyncServiceBrowser(self._azc.zeroconf, [SERVICE], handlers=[on_change])
        try:
            await asyncio.sleep(self.window)
        finally:
            await browser.async_cancel()

        async def resolve(name: str) -> Result | None:
            info = AsyncServiceInfo(SERVICE, name)
            if not await info.async_request(self._azc.zeroconf, RESOLVE_TIMEOUT_MS):
                return None
            addresses = info.parsed_addresses(IPVersion.V4Only)
            ip = next((a for a in addresses if a != "0.0.0.0"), "")  # noqa: S104 - prefer a real address
            instance = name[: -len(SERVICE) - 1] if name.endswith("." + SERVICE) else name
            server = (info.server or "").rstrip(".")
            return Result(instance, ip, server, info.port or 0, _txt(info.properties))

        resolved = await asyncio.gather(*(resolve(n) for n in sorted(names)[:MAX_RESULTS]))
        results: list[Result] = []
        for result in resolved:
            if result is None:
                continue
            if result.txt.get("id", "") == self.identity.long_id:
                print(f"DBUG: Skipping self (matched device id): {result.instance}", flush=True)
                continue
            if f"{result.instance}.local".lower() == f"{self.config.hostname}.local".lower():
                print(f"DBUG: Skipping self (matched hostname): {result.instance}", flush=True)
                continue
            peer_id = result.txt.get("id", "")
            print(f"DBUG: Found peer: {result.instance} {result.ip}:{result.port} id={peer_id}", flush=True)
            results.append(result)
        self.reconcile(results)
        elapsed_ms = int((time.monotonic() - started) * 1000)
        print(f"DBUG: Query complete in {elapsed_ms} ms, found {len(results)} peers", flush=True)

    def reconcile(self, results: list[Result]) -> None:
        """§2.4: update entries matching by id or host, rename hosts, add new ones, mark the rest offline."""
        from openevse_sim.peers import Peer

        seen: set[int] = set()
        persist = False
        structural = False
        for result in results:
            https = result.txt.get("ssl") == "1"
            default_port = 443 if https else 80
            suffix = "" if result.port == default_port else f":{result.port}"
            target = result.ip or result.server or result.instance
            url = f"{'https' if https else 'http'}://{target}{suffix}"
            key = f"{result.instance}.local"
            new_host = key + suffix
            rid = result.txt.get("id", "")
            matches = [
                p for p in self.peers.entries if (rid and p.id and p.id == rid) or p.host in (key, new_host)
            ]
            if not matches:
                peer = Peer(host=key, id=rid, name=result.instance, url=url, ip=result.ip, mdns_online=True)
                self.peers.entries.append(peer)
                seen.add(id(peer))
                structural = True
                continue
            matches.sort(key=lambda p: not p.joined)
            primary, extra = matches[0], matches[1:]
            for other in extra:  # two rows for one device would collide after the rename: merge them
                primary.joined = primary.joined or other.joined
                self.peers.entries.remove(other)
                structural = True
                persist = persist or other.joined
            primary.ip, primary.url, primary.name = result.ip, url, result.instance
            if rid:
                primary.id = rid
            primary.mdns_online = True
            seen.add(id(primary))
            if primary.host != new_host:
                print(f"DBUG: Peer {primary.host} is now {new_host}", flush=True)
                primary.host = new_host
                structural = True
                persist = persist or primary.joined
        for peer in self.peers.entries:
            if id(peer) not in seen:
                peer.mdns_online = False
        if structural:
            self.peers.changed(persist=persist)
