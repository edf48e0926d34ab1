"""Outbound HTTP to peers: the shared client session, fire-and-forget requests (reciprocal
add §1.3, config reset §1.4) and `.local` name resolution over our own mDNS responder."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import aiohttp
    from aiohttp.abc import ResolveResult

FIRE_TIMEOUT = 5.0
MDNS_RESOLVE_MS = 1500


def make_resolver(zeroconf: Callable[[], Any]) -> Any:
    """An aiohttp resolver that answers `*.local` by mDNS on our interfaces (as the firmware's
    mDNS stack does) instead of handing it to the system resolver, which would ask the DNS server."""
    from aiohttp.abc import AbstractResolver
    from aiohttp.resolver import DefaultResolver

    class LocalFirstResolver(AbstractResolver):
        def __init__(self) -> None:
            self._default = DefaultResolver()

        async def resolve(
            self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
        ) -> list[ResolveResult]:
            if not host.lower().rstrip(".").endswith(".local"):
                return await self._default.resolve(host, port, family)
            from zeroconf import DNSQuestionType
            from zeroconf._services.info import AddressResolverIPv4

            azc = zeroconf()
            if azc is None:
                raise OSError(f"cannot resolve {host}: mDNS is not running")
            info = AddressResolverIPv4(host.rstrip(".") + ".")
            if not await info.async_request(azc.zeroconf, MDNS_RESOLVE_MS, DNSQuestionType.QM):
                raise OSError(f"cannot resolve {host} by mDNS")
            return [
                {
                    "hostname": host,
                    "host": address,
                    "port": port,
                    "family": socket.AF_INET,
                    "proto": 0,
                    "flags": socket.AI_NUMERICHOST,
                }
                for address in info.parsed_addresses()
                if ipaddress.ip_address(address).version == 4
            ]

        async def close(self) -> None:
            await self._default.close()

    return LocalFirstResolver()


class Outbound:
    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.zeroconf: Callable[[], Any] = lambda: None  # set once mDNS runs

    def session(self) -> aiohttp.ClientSession:
        import aiohttp

        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=64, force_close=True, resolver=make_resolver(lambda: self.zeroconf())
                ),
                timeout=aiohttp.ClientTimeout(total=10),
            )
        return self._session

    def post_json(self, url: str, body: dict[str, Any], why: str) -> None:
        """Send without waiting; the result is only logged, as the real firmware ignores it."""
        task = asyncio.get_running_loop().create_task(self._post(url, body, why))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, url: str, body: dict[str, Any], why: str) -> None:
        import aiohttp

        try:
            async with self.session().post(
                url, json=body, timeout=aiohttp.ClientTimeout(total=FIRE_TIMEOUT)
            ) as response:
                await response.read()
                print(f"DBUG: {why}: POST {url} -> {response.status}", flush=True)
        except Exception as exc:  # unreachable peers, bad host strings: the firmware ignores the result
            print(f"DBUG: {why}: POST {url} failed: {exc!r}", flush=True)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self._session is not None:
            await self._session.close()
