"""In-repo runs load the harness plugin here; installed copies load it via the pytest11 entry point.

Both name it ``harness.pytest_plugin``, so pytest registers it once."""

pytest_plugins = ["harness.pytest_plugin"]
