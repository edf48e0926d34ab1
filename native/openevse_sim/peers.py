"""The load-sharing group state: local entry, joined and discovered peers (firmware.md §1.2, §2.4).

Joined non-local peers are persisted to `<fs root>/loadsharing_peers.json` as
`{"peers":[{"id":…,"host":…}]}`; bare-string entries are accepted on load (§1.3)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PEERS_FILE = "loadsharing_peers.json"
STATUS_KEYS = ("amp", "voltage", "pilot", "vehicle", "state")
STATUS_LS_KEYS = {
    "loadsharing_min_current": "min_current",
    "loadsharing_max_current": "max_current",
    "loadsharing_priority": "priority",
}


@dataclass
class Peer:
    host: str
    id: str = ""
    name: str = ""
    url: str = ""
    ip: str = ""
    joined: bool = False
    mdns_online: bool = False  # present in the most recent completed sweep
    # Poller cache (§3.2): last good status and when it arrived (monotonic).
    cache: dict[str, Any] = field(default_factory=dict)
    last_rx: float | None = None

    def base_url(self) -> str:
        """Poller/config-push base URL: the discovered url if known, else http://<host> (§3.1)."""
        return self.url or f"http://{self.host}"

    def merge_status(self, doc: dict[str, Any]) -> None:
        for key in (*STATUS_KEYS, *STATUS_LS_KEYS, "config_version", "config_hash"):
            if key in doc:
                self.cache[key] = doc[key]
        self.last_rx = time.monotonic()

    def status_object(self) -> dict[str, Any] | None:
        """`/loadsharing/status` `peers[].status` (§1.6), only once the poller fetched something."""
        if self.last_rx is None:
            return None
        out = {key: self.cache[key] for key in STATUS_KEYS if key in self.cache}
        for src, dst in STATUS_LS_KEYS.items():
            if src in self.cache:
                out[dst] = self.cache[src]
        return out


class PeerGroup:
    """Ordered entries after the local one: persisted/added peers in insertion order, then discovered."""

    def __init__(self, fs_root: Path, heartbeat_timeout: Callable[[], float]) -> None:
        self.path = fs_root / PEERS_FILE
        self.heartbeat_timeout = heartbeat_timeout
        self.entries: list[Peer] = []
        self.version = 0  # `loadsharing_peers_version` in /status
        self.listeners: list[Callable[[], None]] = []  # poller wake-ups
        self.load_error: str | None = None
        self._load()

    # --- persistence ----------------------------------------------------------------------
    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            self.load_error = str(exc)
            return
        items = data.get("peers", []) if isinstance(data, dict) else []
        for item in items if isinstance(items, list) else []:
            if isinstance(item, str):
                host, peer_id = item, ""
            elif isinstance(item, dict) and isinstance(item.get("host"), str):
                host = item["host"]
                raw_id = item.get("id")
                peer_id = raw_id if isinstance(raw_id, str) else ""
            else:
                continue
            if host and self.find(host) is None:
                self.entries.append(Peer(host=host, id=peer_id or "", joined=True))

    def save(self) -> None:
        doc = {"peers": [{"id": p.id, "host": p.host} for p in self.entries if p.joined]}
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(doc), encoding="utf-8")
        tmp.replace(self.path)

    def changed(self, persist: bool) -> None:
        self.version += 1
        if persist:
            self.save()
        for listener in list(self.listeners):
            listener()

    # --- queries --------------------------------------------------------------------------
    def find(self, host: str) -> Peer | None:
        """Exact, case-sensitive host match (§1.3 row 7, §1.4)."""
        for peer in self.entries:
            if peer.host == host:
                return peer
        return None

    def find_by_id(self, peer_id: str) -> Peer | None:
        if not peer_id:
            return None
        for peer in self.entries:
            if peer.id == peer_id:
                return peer
        return None

    def joined(self) -> Iterator[Peer]:
        return (p for p in self.entries if p.joined)

    def is_online(self, peer: Peer) -> bool:
        """§3.3: joined → poller freshness; discovered-only → last sweep."""
        if peer.joined:
            if peer.last_rx is None:
                return False
            return time.monotonic() - peer.last_rx <= self.heartbeat_timeout()
        return peer.mdns_online

    def wipe(self) -> None:
        """`/reset`: forget every peer and empty the FS root (files only; it is ours)."""
        self.entries.clear()
        for child in self.path.parent.iterdir():
            if child.is_file():
                child.unlink(missing_ok=True)
        self.changed(persist=False)

    # --- mutations ------------------------------------------------------------------------
    def join(self, host: str) -> Peer:
        peer = self.find(host)
        if peer is None:
            peer = Peer(host=host, joined=True)
            # Joined entries come before discovered-only ones (§1.2 ordering).
            index = next((i for i, p in enumerate(self.entries) if not p.joined), len(self.entries))
            self.entries.insert(index, peer)
        else:
            peer.joined = True
        self.changed(persist=True)
        return peer

    def unjoin(self, peer: Peer) -> None:
        peer.joined = False
        peer.cache.clear()
        peer.last_rx = None
        self.changed(persist=True)
