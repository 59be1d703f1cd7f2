"""The wire contract's generated code is what the .proto files produce, and the layers hold
(import-linter)."""

from __future__ import annotations

import filecmp
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_generated_code_matches_the_protos(tmp_path):
    out = tmp_path / "protos"
    shutil.copytree(ROOT / "protos", out, ignore=shutil.ignore_patterns("*_pb2*", "__pycache__"))
    protos = sorted(str(p.relative_to(out)) for p in (out / "stoker" / "v1").glob("*.proto"))
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", str(out), f"--python_out={out}",
                    f"--pyi_out={out}", f"--grpc_python_out={out}", *protos], check=True, cwd=out)
    generated = sorted(p.name for p in (out / "stoker" / "v1").glob("*_pb2*"))
    committed = sorted(p.name for p in (ROOT / "protos" / "stoker" / "v1").glob("*_pb2*"))
    assert generated == committed
    _, mismatch, errors = filecmp.cmpfiles(out / "stoker" / "v1", ROOT / "protos" / "stoker" / "v1", generated,
                                           shallow=False)
    assert not mismatch and not errors, (
        f"generated code is stale for {mismatch or errors}: run scripts/gen_protos.sh and commit the result")


def test_every_proto_field_is_documented():
    """Every field has a comment: on the lines above it, or above the run of fields it belongs to."""
    undocumented = []
    for proto in sorted((ROOT / "protos" / "stoker" / "v1").glob("*.proto")):
        lines = [line.strip() for line in proto.read_text().splitlines()]
        in_enum = False
        for i, line in enumerate(lines):
            if line.startswith("enum "):
                in_enum = True
            elif line.startswith(("message ", "}")):
                in_enum = False
            if in_enum or not re.match(r"^(repeated |optional )?[\w.<>, ]+ \w+ = \d+;", line):
                continue
            j = i - 1
            while j >= 0 and re.match(r"^(repeated |optional )?[\w.<>, ]+ \w+ = \d+;", lines[j]):
                j -= 1  # a run of related fields shares the comment above it
            if not lines[j].startswith("//"):
                undocumented.append(f"{proto.name}:{i + 1}: {line}")
    assert not undocumented, "fields without a comment:\n" + "\n".join(undocumented)


LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint_imports(shadow: Path) -> subprocess.CompletedProcess:
    """import-linter with .importlinter over a tree laid out as stoker installs (scripts/shadow_tree.py)."""
    assert LINT_IMPORTS.exists(), "import-linter is missing: pip install -e '.[test]' (scripts/test.sh does)"
    return subprocess.run([str(LINT_IMPORTS), "--config", str(ROOT / ".importlinter"), "--no-cache"],
                          check=False, cwd=shadow, env={**os.environ, "PYTHONPATH": str(shadow)},
                          capture_output=True, text=True, timeout=300)


def _shadow(tmp_path: Path) -> Path:
    shadow = tmp_path / "shadow"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "shadow_tree.py"), str(shadow)], check=True)
    return shadow


def test_the_layer_contracts_hold(tmp_path):
    result = _lint_imports(_shadow(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def _replace_link(shadow: Path, module: str, extra: str) -> None:
    """Turn a linked module of the shadow tree (a package: its ``__init__.py``) into a copy with ``extra``
    appended."""
    path = shadow.joinpath(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    text = path.read_text()
    path.unlink()
    path.write_text(text + "\n" + extra + "\n")


@pytest.mark.parametrize("module, line, contract", [
    ("stoker.coordinator.placement.scheduler", "import grpc", "pure cores import no adapter"),
    ("stoker.coordinator.placement.registry", "import sqlite3", "pure cores import no adapter"),
    ("stoker.agent.cache.store", "from stoker.coordinator.core import errors", "agent and coordinator"),
    ("stoker.coordinator.rollouts.judge", "from stoker.coordinator.placement import scheduler",
     "the rollout subsystem"),
    ("stoker.common.settings", "import stoker.cli.main", "common and the generated contract"),
])
def test_a_deliberate_violation_fails_the_contracts(tmp_path, module, line, contract):
    shadow = _shadow(tmp_path)
    _replace_link(shadow, module, line)
    result = _lint_imports(shadow)
    assert result.returncode != 0
    broken = result.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken and module in broken, result.stdout


def test_a_renamed_core_module_fails_the_contracts_instead_of_passing(tmp_path):
    """A hand-written walk skipped a module it could not find; import-linter must fail on it instead."""
    shadow = _shadow(tmp_path)
    scheduler = shadow / "stoker" / "coordinator" / "placement" / "registry.py"
    scheduler.rename(scheduler.with_name("node_registry.py"))
    result = _lint_imports(shadow)
    assert result.returncode != 0
    assert "stoker.coordinator.placement.registry" in result.stdout + result.stderr
