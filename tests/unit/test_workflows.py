"""Static checks of .github/workflows that the schema and zizmor do not make.

actionlint cannot be installed here (engineering.md §4.1), so this covers what matters most
for this repository: matrix keys that exist, pinned actions, read-only permissions, values
reaching scripts only through ``env:``, timeouts, and the triggers (upstream W21).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW_DIR = ROOT / ".github" / "workflows"
WORKFLOWS = sorted([*WORKFLOW_DIR.glob("*.yml"), *WORKFLOW_DIR.glob("*.yaml")])

EXPRESSION = re.compile(r"\$\{\{(.*?)\}\}", re.DOTALL)
MATRIX_KEY = re.compile(r"\bmatrix\s*(?:\.\s*([A-Za-z_][\w-]*)|\[\s*'([^']+)'\s*\])")
SHA = re.compile(r"[0-9a-f]{40}")
# `uses: owner/repo[/path]@<40 hex> # vX.Y.Z`, checked on the raw text (YAML drops comments).
PINNED_USES_LINE = re.compile(
    r"uses:\s*(?P<action>[^@\s]+)@(?P<sha>[0-9a-f]{40})\s+#\s*(?P<version>v\d+\.\d+\.\d+)\s*$"
)
READ_ONLY = {"read", "none"}


def load(text: str) -> dict[Any, Any]:
    """Parse a workflow (YAML 1.2, so `on` stays a string key)."""
    doc = YAML(typ="safe", pure=True).load(text)
    if not isinstance(doc, dict):
        raise TypeError("a workflow is a mapping")
    return doc


def triggers(doc: dict[Any, Any]) -> set[str]:
    """Event names of `on:` in any of its three forms (YAML 1.1 loaders turn `on` into True)."""
    on = doc.get("on", doc.get(True))
    if isinstance(on, str):
        return {on}
    if isinstance(on, list):
        return {str(event) for event in on}
    if isinstance(on, dict):
        return {str(event) for event in on}
    return set()


def strings(node: Any) -> Iterator[str]:
    """Every string (keys included) anywhere below ``node``."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from strings(key)
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)


def matrix_keys(job: dict[str, Any]) -> set[str]:
    """Keys a job's matrix declares, including those that only `include` entries add."""
    matrix = (job.get("strategy") or {}).get("matrix")
    if not isinstance(matrix, dict):
        return set()
    keys = {key for key in matrix if key not in ("include", "exclude")}
    for entry in matrix.get("include") or []:
        if isinstance(entry, dict):
            keys.update(entry)
    return keys


def used_matrix_keys(job: dict[str, Any]) -> set[str]:
    """Every `matrix.X` / `matrix['X']` inside a `${{ }}` expression anywhere in the job."""
    used: set[str] = set()
    for text in strings(job):
        for expression in EXPRESSION.findall(text):
            for dotted, indexed in MATRIX_KEY.findall(expression):
                used.add(dotted or indexed)
    return used


def permission_problems(where: str, permissions: Any) -> list[str]:
    """Anything but read or none is a write grant."""
    if permissions is None:
        return [f"{where}: no permissions block (the default token may be read-write)"]
    if permissions in ("read-all", {}):
        return []
    if not isinstance(permissions, dict):
        return [f"{where}: permissions {permissions!r} are not read-only"]
    return [
        f"{where}: permission {scope}: {level} is not read-only"
        for scope, level in permissions.items()
        if level not in READ_ONLY
    ]


def check_workflow(text: str) -> list[str]:
    """Every violation of our workflow rules in one workflow's text (empty: all good)."""
    doc = load(text)
    problems: list[str] = []
    if "workflow_run" in triggers(doc):
        problems.append("trigger workflow_run (double runs and the wrong checkout, upstream W21)")
    problems += permission_problems("top level", doc.get("permissions"))

    for job_id, job in (doc.get("jobs") or {}).items():
        if "timeout-minutes" not in job:
            problems.append(f"job {job_id}: no timeout-minutes")
        problems += permission_problems(f"job {job_id}", job.get("permissions"))
        declared = matrix_keys(job)
        for key in sorted(used_matrix_keys(job) - declared):
            problems.append(
                f"job {job_id}: matrix.{key} is not a matrix key (declared: {sorted(declared) or 'none'})"
            )
        for index, step in enumerate(job.get("steps") or []):
            name = step.get("name") or step.get("uses") or f"step {index}"
            uses = step.get("uses")
            if isinstance(uses, str) and not uses.startswith("./"):
                ref = uses.rpartition("@")[2]
                if uses.startswith("docker://"):
                    if "@sha256:" not in uses:
                        problems.append(f"job {job_id}: {name}: image {uses} is not pinned to a digest")
                elif "@" not in uses or not SHA.fullmatch(ref):
                    problems.append(f"job {job_id}: {name}: {uses} is not pinned to a 40-hex commit")
            run = step.get("run")
            if isinstance(run, str) and "${{" in run:
                problems.append(f"job {job_id}: {name}: `${{{{` inside run: (pass values through env:)")

    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip().removeprefix("- ")
        external = stripped.startswith("uses:") and not stripped.startswith(("uses: ./", "uses: docker://"))
        if external and not PINNED_USES_LINE.search(stripped):
            problems.append(f"line {number}: `{stripped}` lacks `@<sha> # vX.Y.Z`")
    return problems


def workflow(name: str) -> dict[str, Any]:
    return load((WORKFLOW_DIR / name).read_text())


# ---- the repository's workflows --------------------------------------------------------------


def test_both_workflows_exist() -> None:
    assert {path.name for path in WORKFLOWS} >= {"ci.yml", "integration.yml"}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda path: path.name)
def test_workflow_keeps_the_rules(path: Path) -> None:
    assert check_workflow(path.read_text()) == []


def test_each_action_has_one_pin_across_workflows() -> None:
    pins: dict[str, set[tuple[str, str]]] = {}
    for path in WORKFLOWS:
        for line in path.read_text().splitlines():
            if match := PINNED_USES_LINE.search(line):
                pins.setdefault(match["action"], set()).add((match["sha"], match["version"]))
    assert pins, "no pinned actions found"
    assert {action: sorted(found) for action, found in pins.items() if len(found) > 1} == {}


def test_integration_matrix_is_2_3_4_and_does_not_fail_fast() -> None:
    strategy = workflow("integration.yml")["jobs"]["suite"]["strategy"]
    assert strategy["matrix"] == {"instances": [2, 3, 4]}
    assert strategy["fail-fast"] is False


def test_integration_triggers_and_inputs() -> None:
    doc = workflow("integration.yml")
    assert triggers(doc) == {"workflow_dispatch", "pull_request", "push"}
    inputs = doc["on"]["workflow_dispatch"]["inputs"]
    assert inputs["firmware_repository"]["default"] == "OpenEVSE/openevse_esp32_firmware"
    assert inputs["firmware_ref"]["default"] == "master"
    image = inputs["emulator_image"]["default"]
    assert image.startswith("ghcr.io/jeremypoulter/openevse_emulator")
    assert not image.endswith(":latest"), "the emulator image must be pinned (upstream W22)"
    assert image in doc["env"]["HARNESS_EMULATOR_IMAGE"], "push/PR runs must use the same pin"


def test_integration_builds_with_our_script_and_pinned_platformio() -> None:
    doc = workflow("integration.yml")
    build_runs = "\n".join(step.get("run", "") for step in doc["jobs"]["build"]["steps"])
    assert "native/build-firmware.sh" in build_runs
    assert re.fullmatch(r"\d+\.\d+\.\d+", doc["env"]["PLATFORMIO_VERSION"])
    assert doc["env"]["PYTHON_VERSION"] == "3.11"


def test_integration_suite_runs_pytest_with_the_matrix_through_env() -> None:
    steps = workflow("integration.yml")["jobs"]["suite"]["steps"]
    (pytest_step,) = [step for step in steps if "pytest" in step.get("run", "")]
    assert pytest_step["env"] == {"INSTANCES": "${{ matrix.instances }}"}
    assert '--instances "$INSTANCES"' in pytest_step["run"]
    down = [step for step in steps if step.get("run", "").strip() == "harness down"]
    assert down
    assert down[0]["if"] == "always()"


def test_checkouts_do_not_persist_credentials() -> None:
    for path in WORKFLOWS:
        for job in load(path.read_text())["jobs"].values():
            for step in job["steps"]:
                if step.get("uses", "").startswith("actions/checkout@"):
                    assert step["with"]["persist-credentials"] is False, path.name


def test_build_script_parses() -> None:
    script = ROOT / "native" / "build-firmware.sh"
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


# ---- the checker catches what it is for --------------------------------------------------------

BROKEN = """\
name: broken
on:
  workflow_run:
    workflows: [build]
    types: [completed]
  workflow_dispatch:
    inputs:
      ref: {type: string}
permissions:
  contents: write
jobs:
  suite:
    runs-on: ubuntu-24.04
    permissions: write-all
    strategy:
      matrix:
        instances: [2, 3]
    steps:
      - uses: actions/checkout@v4
      - uses: actions/setup-python@0123456789abcdef0123456789abcdef01234567
      - run: pytest --instances ${{ matrix.instance }} --ref ${{ inputs.ref }}
"""


def test_checker_reports_every_kind_of_violation() -> None:
    problems = "\n".join(check_workflow(BROKEN))
    for expected in (
        "trigger workflow_run",
        "top level: permission contents: write is not read-only",
        "job suite: no timeout-minutes",
        "job suite: permissions 'write-all' are not read-only",
        "matrix.instance is not a matrix key (declared: ['instances'])",
        "actions/checkout@v4 is not pinned to a 40-hex commit",
        "`${{` inside run:",
        "`uses: actions/setup-python@0123456789abcdef0123456789abcdef01234567` lacks `@<sha> # vX.Y.Z`",
    ):
        assert expected in problems


def test_checker_accepts_the_fixed_snippet() -> None:
    fixed = """\
on: {workflow_dispatch: {inputs: {ref: {type: string}}}}
permissions: {contents: read}
jobs:
  suite:
    runs-on: ubuntu-24.04
    timeout-minutes: 5
    permissions: {contents: read}
    strategy: {matrix: {instances: [2, 3], include: [{instances: 4, extra: x}]}}
    name: n=${{ matrix.instances }} ${{ matrix['extra'] }}
    steps:
      - uses: actions/checkout@0123456789abcdef0123456789abcdef01234567 # v7.0.1
      - env: {INSTANCES: "${{ matrix.instances }}", REF: "${{ inputs.ref }}"}
        run: pytest --instances "$INSTANCES" --ref "$REF"
"""
    assert check_workflow(fixed) == []


def test_matrix_use_without_a_matrix_is_reported() -> None:
    snippet = """\
on: push
permissions: {}
jobs:
  one:
    runs-on: ubuntu-24.04
    timeout-minutes: 5
    permissions: {}
    name: ${{ matrix.instances }}
    steps: [{run: "true"}]
"""
    assert check_workflow(snippet) == ["job one: matrix.instances is not a matrix key (declared: none)"]
