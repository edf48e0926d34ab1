"""HTTP API with Mongoose 6 routing: prefix patterns, longest wins, `$` anchors (firmware.md §1, §7).

Every handler validates its own input; there is deliberately no catch-all that turns
exceptions into 500s, so the malformed-input tests can prove there are none."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from openevse_sim.config import MEMBER_READ_ONLY_MSG, ConfigError, PostResult

if TYPE_CHECKING:
    from openevse_sim.config import Config
    from openevse_sim.evse import Evse
    from openevse_sim.identity import Identity
    from openevse_sim.loadsharing import LoadSharing
    from openevse_sim.outbound import Outbound
    from openevse_sim.peers import Peer, PeerGroup
    from openevse_sim.status import StatusHub

Handler = Callable[[web.Request, str], Awaitable[web.StreamResponse]]

CACHE_CONTROL = "no-cache, private, no-store, must-revalidate, max-stale=0, post-check=0, pre-check=0"
AP_IP = "192.168.4.1"
PEERS_BODY_LIMIT = 256  # the add handler's JSON document is ~256 B (§1.3 row 1)
BODY_LIMIT = 16 * 1024
WS_MAX_MSG = 16 * 1024
LIVE_INPUTS = ("solar", "grid_ie", "shaper_live_pwr", "battery_level", "battery_range", "time_to_full_charge")
CONFIG_RESET = {"loadsharing_enabled": False, "loadsharing_role": "", "loadsharing_controller_host": ""}


def reply(status: int, body: Any) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(body, separators=(",", ":")),
        content_type="application/json",
        headers={"Cache-Control": CACHE_CONTROL},
    )


def msg(status: int, text: str) -> web.Response:
    return reply(status, {"msg": text})


def method_not_allowed() -> web.Response:
    return msg(405, "Method not allowed")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"not JSON: {name}")


def parse_json(raw: bytes) -> Any:
    """Strict JSON (no NaN/Infinity); raises ValueError on anything unparseable."""
    return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)


async def read_body(request: web.Request, limit: int) -> bytes | None:
    """At most `limit` bytes; None when the body is longer."""
    data = await request.content.read(limit + 1)
    return None if len(data) > limit else data


class BodyTooLarge(ValueError):
    """The body is longer than the route accepts (a ValueError: routes that do not answer 413
    treat it as unparseable, as the firmware's fixed-size buffers do)."""


async def read_json(request: web.Request, limit: int) -> Any:
    """The body as strict JSON; ``BodyTooLarge`` past ``limit``, ``ValueError`` if unparseable."""
    raw = await read_body(request, limit)
    if raw is None:
        raise BodyTooLarge(f"body over {limit} bytes")
    return parse_json(raw)


class PercentError(ValueError):
    pass


def percent_decode(text: str) -> str:
    """Mongoose `mg_url_decode` without form mode: `%XX` only, `+` stays `+` (§1.4)."""
    out = bytearray()
    raw = text.encode("utf-8", "surrogateescape")
    i = 0
    while i < len(raw):
        byte = raw[i]
        if byte == 0x25:  # '%'
            pair = raw[i + 1 : i + 3]
            if len(pair) != 2:
                raise PercentError(text)
            try:
                out.append(int(pair.decode("ascii"), 16))
            except (UnicodeDecodeError, ValueError):
                raise PercentError(text) from None
            if not all(chr(c) in "0123456789abcdefABCDEF" for c in pair):
                raise PercentError(text)
            i += 3
        else:
            out.append(byte)
            i += 1
    return out.decode("utf-8", "replace")


@dataclass
class Hooks:
    """What the HTTP layer asks of the rest of the program."""

    discover: Callable[[], None]
    local_ip: Callable[[], str]


class Api:
    def __init__(
        self,
        config: Config,
        identity: Identity,
        peers: PeerGroup,
        hub: StatusHub,
        evse: Evse | None,
        outbound: Outbound,
        loadsharing: LoadSharing,
        hooks: Hooks,
    ) -> None:
        self.config = config
        self.identity = identity
        self.peers = peers
        self.hub = hub
        self.evse = evse
        self.outbound = outbound
        self.loadsharing = loadsharing
        self.hooks = hooks
        self.websockets: set[web.WebSocketResponse] = set()
        # (pattern, exact) -> handler; Mongoose picks the longest matching pattern.
        self.routes: dict[tuple[str, bool], Handler] = {
            ("/", True): self.root,
            ("/status", True): self.status,
            ("/config", True): self.config_route,
            ("/ws", True): self.ws,
            ("/reset", True): self.reset,
            ("/restart", True): self.restart,
            ("/loadsharing/peers", False): self.peers_route,
            ("/loadsharing/peers/", False): self.peer_host_route,
            ("/loadsharing/discover", False): self.discover,
            ("/loadsharing/status", False): self.ls_status,
        }
        for pattern, handler in loadsharing.routes().items():
            self.routes[(pattern.rstrip("$"), pattern.endswith("$"))] = handler

    # --- plumbing -------------------------------------------------------------------------
    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=BODY_LIMIT, handler_args={"max_field_size": 8190})
        app.router.add_route("*", "/{tail:.*}", self.dispatch)
        return app

    def match(self, path: str) -> Handler | None:
        best: tuple[int, Handler] | None = None
        for (pattern, exact), handler in self.routes.items():
            hit = path == pattern if exact else path.startswith(pattern)
            if hit and (best is None or len(pattern) > best[0]):
                best = (len(pattern), handler)
        return None if best is None else best[1]

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.raw_path.split("?", 1)[0]
        if not self._authorised(request):
            return web.Response(
                status=401,
                text=json.dumps({"msg": "Unauthorized"}),
                content_type="application/json",
                headers={"WWW-Authenticate": f'Basic realm="{self.config.hostname}"'},
            )
        handler = self.match(path)
        if handler is None:
            return self.not_found()
        return await handler(request, path)

    def _authorised(self, request: web.Request) -> bool:
        """Basic auth when `www_username` is set, skipped in AP-only mode (§1.1)."""
        user = self.config.str_("www_username")
        if not user or not self.config.sta_mode:
            return True
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        given_user, _, given_pass = decoded.partition(":")
        return given_user == user and given_pass == self.config.str_("www_password")

    def not_found(self) -> web.Response:
        """AP mode redirects unknown URLs to the portal with a 301 (§5.4); STA mode answers 404."""
        if self.config.sta_mode:
            return msg(404, "Not found")
        url = f"http://{AP_IP}"
        page = f'<html><head><meta http-equiv="Refresh" content="0; url={url}" /></head></html>'
        return web.Response(status=301, text=page, content_type="text/html", headers={"Location": url})

    # --- basic routes ---------------------------------------------------------------------
    async def root(self, request: web.Request, path: str) -> web.StreamResponse:
        if request.method != "GET":
            return method_not_allowed()
        page = "<html><body><h1>OpenEVSE (stand-in)</h1><p>See /status and /config.</p></body></html>"
        return web.Response(status=200, text=page, content_type="text/html")

    async def status(self, request: web.Request, path: str) -> web.StreamResponse:
        if request.method == "GET":
            return reply(200, self.hub.document())
        if request.method != "POST":
            return method_not_allowed()
        try:
            body = await read_json(request, BODY_LIMIT)
        except BodyTooLarge:
            return msg(413, "Payload too large")
        except ValueError:
            return msg(400, "Could not parse JSON")
        if not isinstance(body, dict):
            return msg(400, "Could not parse JSON")
        self._apply_live_inputs(body)
        return msg(200, "done")

    def _apply_live_inputs(self, body: dict[str, Any]) -> None:
        """POST /status live inputs (§7.1); non-numbers are ignored."""
        changes: dict[str, Any] = {}
        for key in LIVE_INPUTS:
            value = body.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool) and abs(value) < 1e15:
                if key.startswith(("battery", "time_to")) and self.config.int_("vehicle_data_src") != 3:
                    continue
                self.hub.live[key] = value
                changes[key] = value
        voltage = body.get("voltage")
        if isinstance(voltage, int | float) and not isinstance(voltage, bool) and 0 <= voltage < 1e6:  # noqa: SIM102
            if self.evse is not None:
                self.evse.set_voltage(float(voltage))
        if changes:
            self.hub.publish(changes)

    async def reset(self, request: web.Request, path: str) -> web.StreamResponse:
        """`/reset` (any method): config back to defaults, config image erased, FS emptied (§5.4);
        the process keeps running (`ESPAL.reset()` is a no-op on native)."""
        self.config.factory_reset()
        self.peers.wipe()
        self.hub.publish({"config_version": self.config.version})
        return web.Response(status=200, text="1", content_type="text/plain")

    async def restart(self, request: web.Request, path: str) -> web.StreamResponse:
        """`/restart`: GET and `{"device":"gateway"}` are no-ops on native; `evse` sends `$FR`."""
        if request.method == "GET":
            return web.Response(status=200, text="1", content_type="text/plain")
        if request.method != "POST":
            return method_not_allowed()
        try:
            body = await read_json(request, BODY_LIMIT)
        except ValueError:
            return msg(400, "Couldn't parse json")
        if not isinstance(body, dict) or "device" not in body:
            return msg(400, "wrong payload")
        if body["device"] == "gateway":
            return msg(200, "restart gateway")
        if body["device"] == "evse":
            if self.evse is not None:
                self.evse.restart_controller()
            return msg(200, "restart evse")
        return msg(404, "unknown device")

    async def config_route(self, request: web.Request, path: str) -> web.StreamResponse:
        if request.method == "OPTIONS":
            return web.Response(status=200)
        if request.method == "GET":
            return reply(200, self._config_document())
        if request.method != "POST":
            return method_not_allowed()
        try:
            body = await read_json(request, BODY_LIMIT)
        except BodyTooLarge:
            return msg(413, "Payload too large")
        except ValueError:
            return msg(400, "Could not parse JSON")
        try:
            result = self.config.post(body)
        except ConfigError as exc:
            return msg(exc.status, exc.msg)
        self.after_config_change(result)
        text = "done" if result.changed else "no change"
        return reply(200, {"config_version": result.config_version, "msg": text})

    def after_config_change(self, result: PostResult) -> None:
        """Side effects of an accepted config write (HTTP or serial console)."""
        if result.left_member:  # leaving the member role un-joins the controller entry (§4.3)
            peer = self.peers.find(result.left_member)
            if peer is not None and peer.joined:
                self.peers.unjoin(peer)
        if result.changed:
            self.hub.publish({"config_version": self.config.version})
            self.loadsharing.on_config_changed(set(result.changed_keys))

    def _config_document(self) -> dict[str, Any]:
        from openevse_sim import BUILD_ENV, VERSION

        doc = self.config.public_view()
        doc.update(
            {
                "buildenv": BUILD_ENV,
                "version": VERSION,
                "wifi_serial": self.identity.wifi_serial,
                "espinfo": "EpoxyDuino (openevse-sim stand-in)",
                "espflash": 4194304,
            }
        )
        evse = self.evse
        if evse is not None and evse.connected:
            doc.update(
                {
                    "firmware": evse.firmware,
                    "protocol": evse.protocol_text,
                    "evse_serial": evse.serial,
                    "max_current_soft": evse.max_current_soft,
                    "min_current_hard": evse.min_current_hard,
                    "max_current_hard": evse.max_current_hard,
                    "scale": evse.scale,
                    "offset": evse.offset,
                }
            )
        return doc

    # --- /ws (§7.1) -----------------------------------------------------------------------
    async def ws(self, request: web.Request, path: str) -> web.StreamResponse:
        sock = web.WebSocketResponse(max_msg_size=WS_MAX_MSG, heartbeat=None)
        if request.method != "GET":
            return method_not_allowed()
        if not sock.can_prepare(request).ok:
            return msg(400, "WebSocket upgrade required")
        await sock.prepare(request)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=256)

        def push(event: dict[str, Any]) -> None:
            with contextlib.suppress(asyncio.QueueFull):  # a stuck client loses events, not memory
                queue.put_nowait(event)

        self.websockets.add(sock)
        self.hub.subscribers.add(push)
        writer = asyncio.get_running_loop().create_task(self._ws_writer(sock, queue))
        try:
            # onWsConnect builds the status and sends it with sendAll: every client gets it.
            self.hub.publish({"__full__": True})
            async for frame in sock:
                if frame.type == WSMsgType.TEXT:
                    await self._ws_frame(sock, frame.data)
                elif frame.type == WSMsgType.ERROR:
                    break
        except (ConnectionError, RuntimeError):
            pass
        finally:
            self.hub.subscribers.discard(push)
            self.websockets.discard(sock)
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer
        return sock

    async def _ws_writer(self, sock: web.WebSocketResponse, queue: asyncio.Queue[dict[str, Any]]) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            while not sock.closed:
                event = await queue.get()
                await sock.send_str(json.dumps(event, separators=(",", ":")))

    async def _ws_frame(self, sock: web.WebSocketResponse, data: str) -> None:
        try:
            frame = parse_json(data.encode("utf-8", "surrogateescape"))
        except ValueError:
            return
        if not isinstance(frame, dict):
            return
        ping = frame.get("ping")
        if isinstance(ping, int) and not isinstance(ping, bool) and -128 <= ping <= 127:  # is<int8_t>()
            await sock.send_str('{"pong": 1}')
        allocation = frame.get("loadsharing")
        if isinstance(allocation, dict):
            self.loadsharing.on_allocation_frame(allocation)

    async def close_websockets(self) -> None:
        for sock in list(self.websockets):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sock.close(), 0.2)

    # --- /loadsharing (§1) ----------------------------------------------------------------
    def _is_local(self, host: str) -> bool:
        name = self.config.hostname.lower()
        lowered = host.lower()
        return lowered in (name, f"{name}.local", self.identity.long_id)

    def local_row(self) -> dict[str, Any]:
        port = self.config.http_port
        name = self.config.hostname
        url = f"http://{name}.local" + ("" if port == 80 else f":{port}")
        return {
            "id": self.identity.long_id,
            "name": name,
            "host": f"{name}.local",
            "url": url,
            "ip": self.hooks.local_ip(),
            "online": True,
            "joined": True,
            "isLocal": True,
        }

    def peer_row(self, peer: Peer) -> dict[str, Any]:
        return {
            "id": peer.id,
            "name": peer.name,
            "host": peer.host,
            "url": peer.url,
            "ip": peer.ip,
            "online": self.peers.is_online(peer),
            "joined": peer.joined,
            "isLocal": False,
        }

    async def peers_route(self, request: web.Request, path: str) -> web.StreamResponse:
        if request.method == "GET":
            rows = [self.local_row()] + [self.peer_row(p) for p in self.peers.entries]
            return reply(200, rows)
        if request.method == "DELETE":
            return msg(405, "Use DELETE /loadsharing/peers/{host}")
        if request.method != "POST":
            return method_not_allowed()
        try:
            body = await read_json(request, PEERS_BODY_LIMIT)
        except ValueError:
            return msg(400, "Invalid JSON")
        if not isinstance(body, dict) or "host" not in body:
            return msg(400, "Missing required 'host' parameter")
        if self.config.is_member:
            return msg(403, MEMBER_READ_ONLY_MSG)
        host = _as_text(body["host"]).strip()
        if not host:
            return msg(400, "Host cannot be empty")
        if self._is_local(host):
            return msg(400, "Cannot add local device as peer")
        if "." not in host and ":" not in host:
            return msg(400, "Invalid host format - must contain domain or IP")
        existing = self.peers.find(host)
        if existing is not None and existing.joined:
            return msg(200, "already in group")
        self.peers.join(host)
        print(f"DBUG: Added peer {host} to group", flush=True)
        if body.get("reciprocal", True) is not False:
            self.outbound.post_json(
                f"http://{host}/loadsharing/peers",
                {"host": f"{self.config.hostname}.local", "reciprocal": False},
                "Reciprocal add",
            )
        return msg(200, "done")

    async def peer_host_route(self, request: web.Request, path: str) -> web.StreamResponse:
        remainder = path[len("/loadsharing/peers/") :]
        if not remainder:
            return msg(400, "Invalid path")
        try:
            host = percent_decode(remainder)
        except PercentError:
            return msg(400, "Invalid host")
        if request.method != "DELETE":
            return method_not_allowed()
        if self.config.is_member:
            return msg(403, MEMBER_READ_ONLY_MSG)
        if self._is_local(host):
            return msg(400, "Cannot remove local device from group")
        peer = self.peers.find(host)
        # The config reset goes out before the existence check, even for unknown hosts (§1.4).
        base = peer.base_url() if peer is not None else f"http://{host}"
        self.outbound.post_json(f"{base}/config", dict(CONFIG_RESET), "Config reset")
        if peer is None or not peer.joined:
            return msg(404, "Peer not found")
        self.peers.unjoin(peer)
        print(f"DBUG: Removed peer {host} from group", flush=True)
        return msg(200, "done")

    async def discover(self, request: web.Request, path: str) -> web.StreamResponse:
        if request.method != "POST":
            return method_not_allowed()
        self.hooks.discover()
        return msg(200, "done")

    async def ls_status(self, request: web.Request, path: str) -> web.StreamResponse:
        if request.method != "GET":
            return method_not_allowed()
        rows: list[dict[str, Any]] = []
        online = 1  # the local device counts (§1.6)
        offline = 0
        local = self.local_row()
        del local["isLocal"]
        local.update({"version": "", "last_seen": 0})
        rows.append(local)
        for peer in self.peers.entries:
            row = self.peer_row(peer)
            del row["isLocal"]
            row.update({"version": "", "last_seen": 0})
            status = peer.status_object() if peer.joined else None
            if status is not None:
                row["status"] = status
            if peer.joined:
                if row["online"]:
                    online += 1
                else:
                    offline += 1
            rows.append(row)
        body = {
            "enabled": self.config.bool_("loadsharing_enabled"),
            "group_id": self.config.str_("loadsharing_group_id"),
            "computed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "failsafe_active": self.loadsharing.failsafe_active(),
            "online_count": online,
            "offline_count": offline,
            "peers": rows,
            "allocations": self.loadsharing.allocations(),
        }
        return reply(200, body)


def _as_text(value: Any) -> str:
    """ArduinoJson-ish `as<String>()`: strings as is, scalars as text, containers/null empty."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    return ""
