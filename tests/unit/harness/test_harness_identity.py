"""Identities: unique hostnames, chip ids and short ids (firmware.md §5.2, upstream W10)."""

from __future__ import annotations

from harness.identity import Identity, chip_id_for, long_id, new_session_id, short_id


def test_firmware_md_examples() -> None:
    assert long_id(0x1234567890ABCDEF) == "efcdab907856"
    assert short_id(0x1234567890ABCDEF) == "7856"
    assert long_id(0xFEDCBA0987654321) == "2143658709ba"
    assert short_id(0xFEDCBA0987654321) == "09ba"


def test_rig_members_have_unique_chip_short_and_long_ids() -> None:
    for session in ("000000", "ab12cd", "ffffff", new_session_id()):
        ids = [Identity(session, i) for i in range(64)]
        assert len({i.chip_id for i in ids}) == 64
        assert len({i.short_id for i in ids}) == 64
        assert len({i.long_id for i in ids}) == 64
        assert len({i.hostname for i in ids}) == 64
        assert all(i.hostname == f"evse-{session}-{i.index}" for i in ids)


def test_long_id_is_twelve_hex_digits_and_short_id_is_bytes_2_and_3() -> None:
    for index in range(300):
        chip = chip_id_for("ab12cd", index)
        assert len(long_id(chip)) == 12
        assert short_id(chip) == f"{(chip >> 32) & 0xFF:02x}{(chip >> 40) & 0xFF:02x}"
        assert chip < 1 << 64


def test_sessions_differ_in_chip_ids() -> None:
    assert chip_id_for("ab12cd", 0) != chip_id_for("ab12ce", 0)
    assert Identity("ab12cd", 0).chip_id_hex.startswith("0x4E56")


def test_session_ids_are_short_hex() -> None:
    ids = {new_session_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(len(s) == 6 and int(s, 16) >= 0 for s in ids)
