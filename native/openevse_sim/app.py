"""Wiring and lifecycle: banner, HTTP up first, then the EVSE link, mDNS, discovery, poller (§5.4)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openevse_sim import VERSION
from openevse_sim.cli import CliOptions, report_unknown_flag
from openevse_sim.config import Config
from openevse_sim.identity import DEFAULT_CHIP_ID, Identity, identity_from_chip_id, parse_chip_id

if TYPE_CHECKING:
    from openevse_sim.discovery import Discovery

SHUTDOWN_BUDGET = 0.8


def out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def err(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def load_identity(env: dict[str, str]) -> Identity:
    raw = env.get("OPENEVSE_CHIP_ID")
    chip = parse_chip_id(raw)
    if raw is not None and chip is None:
        err(f"Invalid OPENEVSE_CHIP_ID '{raw}', using the default")
    return identity_from_chip_id(DEFAULT_CHIP_ID if chip is None else chip)


def mdns_interfaces(env: dict[str, str]) -> list[str]:
    raw = env.get("OPENEVSE_SIM_MDNS_INTERFACES", "127.0.0.1")
    return [part.strip() for part in raw.split(",") if part.strip()] or ["127.0.0.1"]


def prepare(opts: CliOptions, env: dict[str, str]) -> tuple[Identity, Config, Path]:
    """Identity, storage and config with the CLI overrides; exits 1 on an unknown flag (§5.2)."""
    identity = load_identity(env)
    eeprom = Path(env.get("EPOXY_EEPROM_DATA") or "epoxyeepromdata")
    fs_root = Path(env.get("EPOXY_FS_ROOT") or "epoxyfsdata")
    config = Config(eeprom, identity.default_hostname)
    if config.load_error:
        err(f"Config load failed, using defaults: {config.load_error}")
    for name, value in opts.set_config:
        if config.apply_cli(name, value):
            err(f"Set config: {name} = {value}")
        else:
            err(f"Config option '{name}' not applied (unknown key or value unchanged)")
    if opts.unknown_flag is not None:
        report_unknown_flag(opts.unknown_flag)
        raise SystemExit(1)
    try:
        fs_root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # the real setup aborts early when LittleFS cannot be created (§5.4)
        err(f"Failed to mount file system at {fs_root}: {exc}")
        raise SystemExit(1) from None
    return identity, config, fs_root


async def run(opts: CliOptions, env: dict[str, str], started: float) -> int:
    identity, config, fs_root = prepare(opts, env)
    interfaces = mdns_interfaces(env)
    http_host = env.get("OPENEVSE_SIM_HTTP_HOST", "127.0.0.1")
    sta_ip = interfaces[0]

    def local_ip() -> str:
        return sta_ip if config.sta_mode else "192.168.4.1"

    out(f"OpenEVSE WiFI {identity.short_id}")
    out(f"Firmware: {VERSION}")
    out("Git Hash: stand-in")
    out(f"Build date: {time.strftime('%b %d %Y', time.gmtime())}")
    out(f"Connected, IP: {sta_ip}" if config.sta_mode else "AP IP Address: 192.168.4.1")

    from aiohttp import web  # lazy: the banner is out before the heavy imports

    from openevse_sim.claims_driver import ClaimsDriver
    from openevse_sim.evse import Evse
    from openevse_sim.http_api import Api, Hooks
    from openevse_sim.http_errors import JsonErrorAppRunner
    from openevse_sim.outbound import Outbound
    from openevse_sim.peers import PeerGroup
    from openevse_sim.poller import Poller
    from openevse_sim.rapi import RapiClient
    from openevse_sim.sharing import LoadSharingService, allocation_period
    from openevse_sim.status import StatusHub

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    peers = PeerGroup(fs_root, lambda: config.heartbeat_timeout)
    if peers.load_error:
        err(f"Peer list load failed: {peers.load_error}")
    evse_box: list[Evse] = []
    rapi = RapiClient(opts.rapi_path, lambda tokens: evse_box[0].handle_event(tokens) if evse_box else None)
    hub = StatusHub(config, rapi, peers, local_ip, identity.long_id)
    claims = ClaimsDriver(config, hub.publish)
    hub.claims_fields = claims.status_fields

    def on_evse_change(changes: dict[str, Any]) -> None:
        claims.on_evse_change(changes)
        hub.publish(changes)

    heartbeat = (config.int_("heartbeat_interval"), config.int_("heartbeat_current"))
    evse = Evse(rapi, on_evse_change, heartbeat)
    evse_box.append(evse)
    hub.evse = evse
    claims.evse = evse
    outbound = Outbound()
    poller = Poller(peers, config, outbound)
    sharing = LoadSharingService(config, peers, poller, claims, outbound, allocation_period(env))
    discovery_box: list[Discovery] = []
    api = Api(
        config,
        identity,
        peers,
        hub,
        evse,
        outbound,
        sharing,
        Hooks(discover=lambda: discovery_box[0].trigger() if discovery_box else None, local_ip=local_ip),
    )

    port = config.http_port
    out(f"Starting HTTP server, http://{http_host}:{port}")
    runner = JsonErrorAppRunner(api.make_app(), access_log=None, handle_signals=False, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, http_host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        err(f"Failed to start HTTP server on {http_host}:{port}: {exc}")
        await runner.cleanup()
        return 1
    out("Server started")
    if env.get("OPENEVSE_SIM_TIMING"):
        err(f"startup: Server started after {time.monotonic() - started:.3f} s")

    # The RAPI PTY is opened once; without it the firmware keeps running unconnected (§5.4).
    problem = rapi.open()
    if problem is not None:
        err(f"Failed to open PTY port: {problem}")
    evse.start()
    claims.start()

    from openevse_sim.discovery import Discovery

    poller.start()
    sharing.start()
    discovery = Discovery(config, identity, peers, interfaces, env)
    discovery_box.append(discovery)
    outbound.zeroconf = discovery.zeroconf
    discovery.start()

    from openevse_sim.console import Console

    console = Console(config, api.after_config_change)
    console.start()

    await stop.wait()

    async def shutdown() -> None:
        """mDNS goodbye first (peers drop us at once), then the EVSE link, peers and sockets."""
        console.stop()
        await discovery.stop()
        await sharing.stop()
        await claims.stop()
        await evse.stop()
        rapi.close()
        await poller.stop()
        await api.close_websockets()
        await runner.cleanup()
        await outbound.close()

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(shutdown(), SHUTDOWN_BUDGET)
    return 0


def main_async(opts: CliOptions, started: float) -> int:
    return asyncio.run(run(opts, dict(os.environ), started))
