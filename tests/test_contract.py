"""The wire contract's generated code is what the .proto files produce, and the layers hold."""

from __future__ import annotations

import ast
import filecmp
import re
import shutil
import subprocess
import sys
from pathlib import Path

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


PACKAGES = {"stoker.agent": ROOT / "agent", "stoker.coordinator": ROOT / "coordinator",
            "stoker.common": ROOT / "common", "stoker.cli": ROOT / "cli"}
ADAPTERS = ("grpc", "grpc_health", "grpc_reflection", "boto3", "botocore", "kubernetes", "sqlite3", "stoker.v1")
PURE_CORES = ["stoker.coordinator.scheduler", "stoker.coordinator.registry", "stoker.coordinator.inventory",
              "stoker.coordinator.domain", "stoker.coordinator.errors", "stoker.agent.cache.store",
              "stoker.coordinator.rollout", "stoker.coordinator.judge"]


def _imports() -> dict[str, set[str]]:
    """module name → every module it imports (absolute names, at any depth in the file)."""
    found: dict[str, set[str]] = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            module = ".".join([package, *parts])
            names: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names.update(a.name for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names.add(node.module)
                    names.update(f"{node.module}.{a.name}" for a in node.names)
            found[module] = names
    return found


def _hits(names: set[str], prefixes) -> list[str]:
    return sorted(n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes))


def test_agent_and_coordinator_never_import_each_other():
    bad = []
    for module, names in _imports().items():
        if module.startswith("stoker.agent"):
            bad += [f"{module} imports {n}" for n in _hits(names, ["stoker.coordinator", "stoker.cli"])]
        if module.startswith("stoker.coordinator"):
            bad += [f"{module} imports {n}" for n in _hits(names, ["stoker.agent", "stoker.cli"])]
        if module.startswith("stoker.common"):
            bad += [f"{module} imports {n}" for n in _hits(names, ["stoker.agent", "stoker.coordinator", "stoker.cli"])]
    assert not bad, "\n".join(bad)


def test_pure_cores_import_no_adapters():
    imports = _imports()
    bad = []
    for module in PURE_CORES:
        if module not in imports:
            continue
        bad += [f"{module} imports {n}" for n in _hits(imports[module], ADAPTERS)]
        # and nothing that is itself an adapter of the same service
        bad += [f"{module} imports {n}" for n in _hits(imports[module], ["stoker.coordinator.state",
                                                                          "stoker.coordinator.service"])]
    assert "stoker.coordinator.scheduler" in imports
    assert not bad, "\n".join(bad)
