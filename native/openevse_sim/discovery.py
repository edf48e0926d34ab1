"""mDNS advertisement and discovery sweeps (firmware.md §2).

Models the fixed discovery of upstream PR #1219: sweeps browse `_openevse._tcp` (the branch
tip queries `openevse.tcp` and finds nothing). python-zeroconf is bound only to the addresses
in `OPENEVSE_SIM_MDNS_INTERFACES` (default 127.0.0.1), IPv4 only, so nothing leaves loopback."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from openevse_sim import BUILD_ENV, VERSION
from openevse_sim.tasks import spawn

if TYPE_CHECKING:
    from openevse_sim.config import Config
    from openevse_sim.identity import Identity
    from openevse_sim.peers import PeerGroup

SERVICE = "_openevse._tcp.local."
SWEEP_PERIOD = 10.0  # after the previous sweep start (§2.3)
DEFAULT_WINDOW = 1.0  # how long a sweep collects answers; the real query runs up to 5 s
QUERY_TIMEOUT = 5.0  # a sweep never runs longer than the real query timeout (§2.3)
MAX_RESULTS = 20  # the real query's result cap (§2.2); OPENEVSE_SIM_MAX_RESULTS overrides it


@dataclass(frozen=True)
class Result:
    instance: str
    ip: str
    server: str
    port: int
    txt: dict[str, str]


def _txt(raw: bytes) -> dict[str, str]:
    """TXT rdata: length-prefixed `key=value` strings; surrounding quotes stripped (§2.2)."""
    out: dict[str, str] = {}
    i = 0
    while i < len(raw):
        length = raw[i]
        item = raw[i + 1 : i + 1 + length].decode("utf-8", "replace")
        i += 1 + length
        key, _, value = item.partition("=")
        if key:
            out[key.strip('"')] = value.strip('"')
    return out


def _query_socket(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.bind((address, 0))
        # Multicast leaves by this interface only (127.0.0.1 by default: loopback).
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(address))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    except OSError:
        sock.close()
        raise
    return sock


def _send_query(socks: list[socket.socket]) -> int:
    from zeroconf._dns import DNSQuestion
    from zeroconf._protocol.outgoing import DNSOutgoing
    from zeroconf.const import _CLASS_IN, _FLAGS_QR_QUERY, _MDNS_ADDR, _MDNS_PORT, _TYPE_PTR

    # A random id also keeps responders from dropping our packet as a duplicate of another
    # instance's identical query (python-zeroconf suppresses repeats for a short interval).
    query_id = random.randint(1, 0xFFFF)
    out = DNSOutgoing(_FLAGS_QR_QUERY, multicast=False, id_=query_id)
    out.add_question(DNSQuestion(SERVICE, _TYPE_PTR, _CLASS_IN))
    for sock in socks:
        for packet in out.packets():
            with contextlib.suppress(OSError):
                sock.sendto(packet, (_MDNS_ADDR, _MDNS_PORT))
    return query_id


def _parse(data: bytes, ids: set[int]) -> list[Any]:
    from zeroconf._protocol.incoming import DNSIncoming

    msg = DNSIncoming(data)
    if not msg.valid or not msg.is_response() or msg.id not in ids:
        return []
    return list(msg.answers())


def _results(records: list[Any]) -> dict[str, Result]:
    """Join PTR -> SRV/TXT -> A records into one Result per instance."""
    from zeroconf._dns import DNSAddress, DNSPointer, DNSService, DNSText

    names: list[str] = []
    srv: dict[str, Any] = {}
    txt: dict[str, bytes] = {}
    addrs: dict[str, list[str]] = {}
    for rec in records:
        key = rec.name.lower()
        if isinstance(rec, DNSPointer) and key == SERVICE.lower() and rec.ttl > 0:
            if rec.alias not in names:
                names.append(rec.alias)
        elif isinstance(rec, DNSService):
            srv[key] = rec
        elif isinstance(rec, DNSText):
            txt[key] = rec.text
        elif isinstance(rec, DNSAddress) and len(rec.address) == 4:
            addrs.setdefault(key, []).append(socket.inet_ntoa(rec.address))
    out: dict[str, Result] = {}
    for name in names:
        service = srv.get(name.lower())
        if service is None:
            continue
        server = str(service.server)
        ips = addrs.get(server.lower(), [])
        ip = next((a for a in ips if a != "0.0.0.0"), "")  # noqa: S104 - prefer a real address
        instance = name[: -len(SERVICE) - 1] if name.endswith("." + SERVICE) else name
        out[name] = Result(
            instance, ip, server.rstrip("."), int(service.port), _txt(txt.get(name.lower(), b""))
        )
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
        try:
            self.max_results = max(1, int(env.get("OPENEVSE_SIM_MAX_RESULTS", MAX_RESULTS)))
        except ValueError:
            self.max_results = MAX_RESULTS
        self._trigger = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._azc: Any = None
        self._info: Any = None
        self._in_flight = False

    def start(self) -> None:
        self._tasks.append(spawn(self._run(), "discovery"))

    def zeroconf(self) -> Any:
        """The running AsyncZeroconf, or None (used to resolve `.local` names)."""
        return self._azc

    def trigger(self) -> None:
        """`POST /loadsharing/discover`: sweep now, or extend the one in flight (§2.3)."""
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
            print(f"Failed to create mDNS responder: {exc!r}", file=sys.stderr, flush=True)
            return
        self._tasks.append(spawn(self._advertise(), "mdns-advertise"))
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
            print(f"mDNS: name collision for '{hostname}', not published", file=sys.stderr, flush=True)
            self._info = None
        except Exception as exc:
            print(f"mDNS: registration failed: {exc!r}", file=sys.stderr, flush=True)
            self._info = None

    async def _sweep(self) -> None:
        started = time.monotonic()
        try:
            answers = await self._query(started)
        except OSError as exc:
            print(f"mDNS: query failed: {exc!r}", file=sys.stderr, flush=True)
            answers = {}
        results: list[Result] = []
        for result in answers.values():
            if result.txt.get("id", "") == self.identity.long_id:
                print(f"DBUG: Skipping self (matched device id): {result.instance}", flush=True)
                continue
            if f"{result.instance}.local".lower() == f"{self.config.hostname}.local".lower():
                print(f"DBUG: Skipping self (matched hostname): {result.instance}", flush=True)
                continue
            peer_id = result.txt.get("id", "")
            print(f"DBUG: Found peer: {result.instance} {result.ip}:{result.port} id={peer_id}", flush=True)
            results.append(result)
        self.reconcile(results[: self.max_results])
        elapsed_ms = int((time.monotonic() - started) * 1000)
        print(f"DBUG: Query complete in {elapsed_ms} ms, found {len(results)} peers", flush=True)

    async def _query(self, started: float) -> dict[str, Result]:
        """One-shot PTR query for `_openevse._tcp` from an ephemeral port (RFC 6762 §6.7).

        Responders answer such "legacy unicast" queries at once, by unicast to our socket,
        with SRV/TXT/A as additionals. Unlike a browse from port 5353 this is neither delayed
        by the one-answer-per-second multicast rule nor lost to SO_REUSEPORT (several
        instances on one host share 5353, and a unicast reply reaches only one of them).
        A POST discover during the window re-sends the query and extends the window."""
        loop = asyncio.get_running_loop()
        socks = [_query_socket(addr) for addr in self.interfaces]
        ids: set[int] = set()
        records: list[Any] = []
        try:
            self._trigger.clear()
            ids.add(_send_query(socks))
            deadline = started + self.window
            limit = started + QUERY_TIMEOUT
            receivers: dict[asyncio.Future[Any], socket.socket] = {
                asyncio.ensure_future(loop.sock_recv(sock, 9000)): sock for sock in socks
            }
            trigger_wait: asyncio.Future[Any] = asyncio.ensure_future(self._trigger.wait())
            try:
                while (remaining := min(deadline, limit) - time.monotonic()) > 0:
                    done, _ = await asyncio.wait(
                        [*receivers, trigger_wait], timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                    )
                    if trigger_wait in done:
                        self._trigger.clear()
                        trigger_wait = asyncio.ensure_future(self._trigger.wait())
                        ids.add(_send_query(socks))
                        deadline = time.monotonic() + self.window
                    for fut in [f for f in done if f in receivers]:
                        sock = receivers.pop(fut)
                        with contextlib.suppress(OSError):
                            records.extend(_parse(fut.result(), ids))
                        receivers[asyncio.ensure_future(loop.sock_recv(sock, 9000))] = sock
            finally:
                for fut in [*receivers, trigger_wait]:
                    fut.cancel()
        finally:
            for sock in socks:
                sock.close()
        return _results(records)

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
