"""Device identity from the chip id (firmware.md §5.2, `OPENEVSE_CHIP_ID`)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_CHIP_ID = 0x1234567890ABCDEF


@dataclass(frozen=True)
class Identity:
    chip_id: int
    long_id: str  # lower-case hex, the mDNS TXT `id` and peer-list `id`
    short_id: str  # last 4 chars of long_id; default hostname is openevse-<short_id>

    @property
    def wifi_serial(self) -> str:
        """`/config` `wifi_serial` is the long id in upper case (§5.2)."""
        return self.long_id.upper()

    @property
    def default_hostname(self) -> str:
        return f"openevse-{self.short_id}"


def parse_chip_id(text: str | None) -> int | None:
    """`0x…` or bare hex; None when absent or unparseable."""
    if text is None:
        return None
    value = text.strip()
    if value[:2].lower() == "0x":
        value = value[2:]
    if not value or len(value) > 16:
        return None
    try:
        return int(value, 16)
    except ValueError:
        return None


def identity_from_chip_id(chip_id: int) -> Identity:
    """Low 6 bytes, least significant first, lower-case hex; the first byte is not zero-padded."""
    octets = [(chip_id >> (8 * i)) & 0xFF for i in range(6)]
    long_id = f"{octets[0]:x}" + "".join(f"{b:02x}" for b in octets[1:])
    return Identity(chip_id=chip_id, long_id=long_id, short_id=long_id[-4:])
