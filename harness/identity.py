"""Names and chip ids: unique per instance, per rig and (with high probability) per run.

Concurrent runs share one mDNS domain, so hostnames carry the session id
(`evse-<session>-<i>`). The firmware derives its device id from ``OPENEVSE_CHIP_ID``
(firmware.md §5.2): long id = the low 6 bytes, least significant first, lower-case hex,
first byte not zero-padded; short id = its last 4 chars (bytes 2-3 of the 64-bit value).
Identical ids make discovery self-filter every peer (upstream W10), so both must differ."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

# Top two bytes mark ids the harness made (0x4E56, "NV"), visible in /config wifi_serial.
MARKER = 0x4E56
# An odd step visits all 65536 short ids before repeating, so a rig's short ids never clash.
SHORT_STEP = 0x9E37


def new_session_id() -> str:
    """Six lower-case hex digits: short enough for hostnames, random across runs."""
    return secrets.token_hex(3)


def long_id(chip_id: int) -> str:
    octets = [(chip_id >> (8 * i)) & 0xFF for i in range(6)]
    return f"{octets[0]:x}" + "".join(f"{b:02x}" for b in octets[1:])


def short_id(chip_id: int) -> str:
    return long_id(chip_id)[-4:]


def chip_id_for(session: str, index: int) -> int:
    """A 64-bit chip id: marker, short id (bytes 2-3) spread by index, low bytes from the session.

    Layout (most significant first): MARKER(2) SHORT(2) SESSION(3) LOW(1) where LOW >= 0x10 so
    the unpadded first hex byte of the long id always has two digits."""
    seed = (
        int(session, 16) if _is_hex(session) else int.from_bytes(session.encode()[:3].ljust(3, b"\0"), "big")
    )
    seed &= 0xFFFFFF
    short = ((seed & 0xFFFF) + index * SHORT_STEP) & 0xFFFF
    low = 0x10 + (index % 0xF0)
    return (MARKER << 48) | (short << 32) | (seed << 8) | low


def _is_hex(text: str) -> bool:
    try:
        int(text, 16)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Identity:
    """Who instance ``index`` of ``session`` is."""

    session: str
    index: int

    @property
    def name(self) -> str:
        return f"evse-{self.session}-{self.index}"

    @property
    def hostname(self) -> str:
        return self.name

    @property
    def chip_id(self) -> int:
        return chip_id_for(self.session, self.index)

    @property
    def chip_id_hex(self) -> str:
        return f"0x{self.chip_id:016X}"

    @property
    def long_id(self) -> str:
        return long_id(self.chip_id)

    @property
    def short_id(self) -> str:
        return short_id(self.chip_id)
