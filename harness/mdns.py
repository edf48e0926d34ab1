"""A small zeroconf browser: what a LAN client sees of the firmware's mDNS advertisement.

firmware.md §2.1: each unit publishes ``_openevse._tcp`` with the instance name = its
``hostname``, port = ``www_http_port`` and TXT ``type``, ``version``, ``id`` (long id, lower-case
hex), ``ssl``. The stand-in advertises with python-zeroconf on 127.0.0.1; a real (native) build
advertises through Avahi, which never uses loopback (engineering.md §3.1.4), so ``interfaces``
must name an address on an interface that Avahi also uses.

The browser polls with a deadline and returns early once ``want(records)`` holds; no fixed sleep.
IPv4 only (python-zeroconf issue #1357 on loopback); the Zeroconf instance is always closed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from zeroconf import DNSQuestionType, IPVersion, ServiceBrowser, ServiceInfo, ServiceStateChange, Zeroconf

OPENEVSE_SERVICE = "_openevse._tcp.local."

# How long one resolve request may wait for an answer, and how often the loop looks again.
_RESOLVE_MS = 500
_POLL_S = 0.05
# A browser's queries back off (1 s, 2 s, 4 s, ...); until ``want`` holds, a fresh browser
# (whose first query goes out at once) asks again at this pace, so one lost answer costs a
# second, not half the deadline.
_REQUERY_S = 1.0


@dataclass(frozen=True)
class ServiceRecord:
    """One resolved service instance."""

    name: str  # instance name, e.g. "evse-ab12cd-0" (service suffix removed)
    fullname: str  # e.g. "evse-ab12cd-0._openevse._tcp.local."
    port: int
    addresses: tuple[str, ...]  # IPv4 addresses, dotted quad
    server: str  # SRV target host
    properties: dict[str, str] = field(default_factory=dict)  # TXT, decoded as UTF-8


def instance_name(fullname: str, service: str) -> str:
    """``"x._openevse._tcp.local."`` → ``"x"`` (left unchanged if it lacks the suffix)."""
    suffix = "." + service
    return fullname[: -len(suffix)] if fullname.endswith(suffix) else fullname


def _decode(value: bytes | None) -> str:
    return "" if value is None else value.decode("utf-8", "replace")


def _record(info: ServiceInfo, service: str) -> ServiceRecord | None:
    if info.port is None:
        return None
    props = {_decode(k): _decode(v) for k, v in info.properties.items()}
    return ServiceRecord(
        name=instance_name(info.name, service),
        fullname=info.name,
        port=int(info.port),
        addresses=tuple(info.parsed_addresses(IPVersion.V4Only)),
        server=info.server or "",
        properties=props,
    )


def browse(
    service: str = OPENEVSE_SERVICE,
    interfaces: list[str] | None = None,
    timeout: float = 5.0,
    want: Callable[[dict[str, ServiceRecord]], bool] | None = None,
) -> dict[str, ServiceRecord]:
    """Browse ``service`` on ``interfaces`` (IPv4 addresses; default ``["127.0.0.1"]``).

    Returns ``{instance name: ServiceRecord}`` for every instance resolved before the
    deadline. With ``want``, returns as soon as ``want(records)`` is true; without it, browses
    for the whole ``timeout``. Never raises on timeout: the caller asserts on what was seen.
    """
    ifaces = list(interfaces) if interfaces else ["127.0.0.1"]
    deadline = time.monotonic() + timeout
    lock = threading.Lock()
    changed = threading.Event()
    pending: set[str] = set()  # names seen added/updated, still to (re)resolve
    removed: set[str] = set()
    records: dict[str, ServiceRecord] = {}

    def on_change(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        with lock:
            if state_change is ServiceStateChange.Removed:
                pending.discard(name)
                removed.add(name)
            else:
                removed.discard(name)
                pending.add(name)
        changed.set()

    zc = Zeroconf(interfaces=ifaces, ip_version=IPVersion.V4Only)
    browser: ServiceBrowser | None = None
    again: ServiceBrowser | None = None
    try:
        # QM (multicast answers): several processes share 127.0.0.1:5353 with SO_REUSEPORT and a
        # unicast answer to a QU question reaches only one of them, maybe not us.
        browser = ServiceBrowser(zc, service, handlers=[on_change], question_type=DNSQuestionType.QM)
        next_query = time.monotonic() + _REQUERY_S
        while True:
            with lock:
                todo = sorted(pending)
                gone = sorted(removed)
                removed.clear()
            for fullname in gone:
                records.pop(instance_name(fullname, service), None)
            for fullname in todo:
                remaining_ms = int((deadline - time.monotonic()) * 1000)
                if remaining_ms <= 0:
                    break
                info = ServiceInfo(service, fullname)
                if info.request(zc, min(_RESOLVE_MS, remaining_ms), question_type=DNSQuestionType.QM):
                    rec = _record(info, service)
                    if rec is not None:
                        records[rec.name] = rec
                        with lock:
                            pending.discard(fullname)
            if want is not None and want(dict(records)):
                break
            now = time.monotonic()
            remaining = deadline - now
            if remaining <= 0:
                break
            if now >= next_query:
                if again is not None:
                    again.cancel()
                again = ServiceBrowser(zc, service, handlers=[on_change], question_type=DNSQuestionType.QM)
                next_query = now + _REQUERY_S
            changed.wait(min(_POLL_S, remaining))
            changed.clear()
        return dict(records)
    finally:
        for b in (browser, again):
            if b is not None:
                b.cancel()
        zc.close()
