"""The README's code example is run as written (upstream W20: docs drift from the code)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.harness.support import env_for

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_python_example_passes(tmp_path: Path, run_root: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README.md has no ```python example any more: update this test"
    # In tmp_path, not under tests/: a parallel worker must never collect it. The plugin comes
    # from the installed entry point; PYTHONPATH lets the example import tests.integration.
    test_file = tmp_path / "test_readme_example.py"
    test_file.write_text(blocks[0])
    argv = [sys.executable, "-m", "pytest", str(test_file), "--instances", "2", "-q"]
    done = subprocess.run(
        argv,
        env=env_for(run_root, PYTHONPATH=str(README.parent)),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "1 passed" in done.stdout
