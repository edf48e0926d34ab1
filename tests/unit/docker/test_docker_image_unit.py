"""The emulator image's content hash decides when `harness image build` rebuilds."""

from __future__ import annotations

from pathlib import Path

from harness.docker.image import content_hash


def tree(root: Path) -> Path:
    (root / "pkg").mkdir(parents=True)
    (root / "Dockerfile").write_text("FROM base\n")
    (root / "__main__.py").write_text("print('hi')\n")
    (root / "pkg" / "mod.py").write_text("X = 1\n")
    return root


def test_hash_is_stable_and_ignores_bytecode_caches(tmp_path: Path) -> None:
    root = tree(tmp_path / "a")
    first = content_hash(root)
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0junk")
    (root / "pkg" / "mod.pyc").write_bytes(b"\0junk")
    assert content_hash(root) == first
    assert content_hash(tree(tmp_path / "b")) == first  # location does not matter


def test_hash_changes_with_content_names_and_exec_bits(tmp_path: Path) -> None:
    root = tree(tmp_path / "a")
    seen = {content_hash(root)}
    (root / "pkg" / "mod.py").write_text("X = 2\n")
    seen.add(content_hash(root))
    (root / "pkg" / "mod.py").rename(root / "pkg" / "mod2.py")
    seen.add(content_hash(root))
    (root / "__main__.py").chmod(0o700)
    seen.add(content_hash(root))
    assert len(seen) == 4
