"""The container image's install step, without a Docker engine (none runs here).

The Dockerfile's build stage copies the context that .dockerignore lets through, builds a wheel of stoker
(``pip wheel --no-deps .``, which compiles the cache's C writer), creates a fresh venv and installs the
wheel into it with binary wheels only for the dependencies. This test does the same: it copies the repo
through the same .dockerignore rules into a temporary context, runs those same commands with this
interpreter (Python 3.11, as the image), and then checks the result the way the image is used:
``stoker --help`` and both entry points, every stoker module importable from the venv (not from the
source tree), and the generated protobuf code present.

It installs the dependencies from the package index like ``docker build`` does, so it needs the network
to PyPI and takes about a minute (pip's cache makes reruns faster). It also checks the Dockerfile keeps
the promises the manifests in deploy/ rely on (ENTRYPOINT ["stoker"], non-root uid 10001).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


# ---------------------------------------------------------------- .dockerignore, as Docker reads it


def dockerignore_patterns() -> list[tuple[bool, re.Pattern]]:
    """(is_exception, regex) per line, in order. Docker's rules: ``*`` and ``?`` stay within one path
    element, ``**`` spans any number, ``!`` re-includes, the last matching line wins, and a pattern that
    matches a directory also matches everything under it."""
    patterns = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        patterns.append((exception, re.compile(regex)))
    return patterns


def is_ignored(relpath: str, patterns) -> bool:
    parts = relpath.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for exception, regex in patterns:
        if any(regex.fullmatch(c) for c in candidates):
            ignored = not exception
    return ignored


def copy_build_context(destination: Path) -> list[str]:
    """Copy what ``docker build`` would send; return the relative paths copied."""
    patterns = dockerignore_patterns()
    copied = []
    for root, dirs, files in os.walk(REPO):
        rel_root = os.path.relpath(root, REPO)
        rel_root = "" if rel_root == "." else rel_root + "/"
        # Docker still descends into ignored folders that an exception could reach into; none of the
        # exceptions here points inside an ignored folder, so pruning them is the same and much faster.
        dirs[:] = [d for d in dirs if not is_ignored(rel_root + d, patterns)]
        for name in files:
            rel = rel_root + name
            if not is_ignored(rel, patterns):
                target = destination / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(os.path.join(root, name), target)
                copied.append(rel)
    return copied


def test_dockerignore_rules_are_read_the_docker_way():
    patterns = dockerignore_patterns()
    assert is_ignored(".venv/bin/python", patterns)
    assert is_ignored(".git/HEAD", patterns)
    assert is_ignored("tests/test_deploy.py", patterns)
    assert is_ignored("agent/__pycache__/config.cpython-311.pyc", patterns)
    assert not is_ignored("pyproject.toml", patterns)
    assert not is_ignored("setup.py", patterns)
    assert is_ignored("agent/cache/_fastio.cpython-311-x86_64-linux-gnu.so", patterns)  # built in the image
    assert not is_ignored("agent/cache/api.py", patterns)
    assert not is_ignored("protos/stoker/v1/build_pb2.py", patterns)


# ---------------------------------------------------------------- the install step


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    result = subprocess.run(
        cmd, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        pytest.fail(
            f"`{' '.join(cmd)}` exited {result.returncode}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result.stdout


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory) -> Path:
    """The image's /opt/stoker, built in a temporary directory by the Dockerfile's commands."""
    base = tmp_path_factory.mktemp("image")
    context, wheels, venv = base / "src", base / "wheels", base / "opt-stoker"
    context.mkdir()
    copy_build_context(context)
    # The environment of the build stage: no PYTHONPATH or venv of ours leaking in.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    python = sys.executable
    run([python, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(wheels), "."], cwd=context, env=env)
    (wheel,) = wheels.glob("stoker-*.whl")
    run([python, "-m", "venv", str(venv)], cwd=base, env=env)
    run(
        [str(venv / "bin" / "pip"), "install", "--only-binary=:all:", str(wheel)],
        cwd=base,
        env=env,
        timeout=900,
    )
    return venv


def in_image(venv: Path, *args: str) -> str:
    """Run a command the way the image would: from outside the source tree, with the venv on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return run(list(args), cwd=venv, env=env, timeout=120)


def test_stoker_help_and_both_entry_points_run_from_the_image_venv(image_venv):
    assert "coordinator" in in_image(image_venv, "stoker", "--help")
    assert "--drain" in in_image(image_venv, "stoker", "agent", "--help")
    assert "--state" in in_image(image_venv, "stoker", "coordinator", "--help")


def source_packages() -> dict[str, Path]:
    """Every package the repo holds, by import name, from pyproject's package-dir mapping."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {}
    for name, folder in config["package-dir"].items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            dotted = ".".join([name, *rel.parts]) if rel.parts else name
            packages[dotted] = init.parent
    return packages


def test_every_stoker_module_imports_from_the_venv_not_the_source_tree(image_venv):
    script = """
import importlib, json, pkgutil, sys
import stoker
found, failed = {}, {}
for pkg in sys.argv[1:]:
    try:
        module = importlib.import_module(pkg)
        found[pkg] = module.__file__
        for info in pkgutil.iter_modules(module.__path__, pkg + "."):
            try:
                found[info.name] = importlib.import_module(info.name).__file__
            except Exception as exc:
                failed[info.name] = repr(exc)
    except Exception as exc:
        failed[pkg] = repr(exc)
print(json.dumps({"found": found, "failed": failed}))
"""
    packages = sorted(source_packages())
    assert {"stoker.v1", "stoker.agent", "stoker.coordinator", "stoker.cli"} <= set(packages)
    result = json.loads(in_image(image_venv, str(image_venv / "bin" / "python"), "-c", script, *packages))
    assert not result["failed"], f"modules that do not import from the installed wheel: {result['failed']}"
    site = str(image_venv)
    outside = {name: path for name, path in result["found"].items() if not path.startswith(site)}
    assert not outside, f"imported from outside the image's venv: {outside}"
    for expected in (
        "stoker.v1.build_pb2",
        "stoker.v1.agent_pb2_grpc",
        "stoker.agent.kube_node",
        "stoker.agent.cache._fastio",
    ):
        assert expected in result["found"], f"{expected} is missing from the wheel"


def test_dependencies_are_consistent_in_the_image_venv(image_venv):
    in_image(image_venv, str(image_venv / "bin" / "python"), "-m", "pip", "check")


# ---------------------------------------------------------------- the Dockerfile's promises


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip() if " " in line.strip() else "")
        for line in (raw.strip() for raw in text.splitlines())
        if line and not line.startswith("#")
    ]


def test_dockerfile_is_multi_stage_slim_non_root_with_stoker_as_entrypoint():
    instructions = dockerfile_instructions()
    args = dict(value.split("=", 1) for kind, value in instructions if kind == "ARG" and "=" in value)
    stages = [value for kind, value in instructions if kind == "FROM"]
    assert len(stages) >= 2, "multi-stage: build, then a runtime stage without the build's leftovers"
    base = args.get("PYTHON_IMAGE", "")
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", base), f"slim python 3.11 base, found {base!r}"
    assert all(stage.startswith("${PYTHON_IMAGE}") for stage in stages)

    runtime = instructions[max(i for i, (kind, _) in enumerate(instructions) if kind == "FROM") :]
    users = [value for kind, value in runtime if kind == "USER"]
    assert users and users[-1] == "10001:10001", "runtime runs as uid 10001, as deploy/ expects"
    entrypoints = [json.loads(value) for kind, value in runtime if kind == "ENTRYPOINT"]
    assert entrypoints == [["stoker"]]
    assert any(kind == "COPY" and value.startswith("--from=build") for kind, value in runtime)

    build_runs = " ".join(value for kind, value in instructions if kind == "RUN")
    for step in ("pip wheel --no-deps", "-m venv /opt/stoker", "install --only-binary=:all:"):
        assert step in build_runs, f"the Dockerfile no longer does {step!r}; update this test with it"


def test_the_build_context_holds_every_package_folder():
    patterns = dockerignore_patterns()
    for name, folder in source_packages().items():
        init = (folder / "__init__.py").relative_to(REPO).as_posix()
        assert not is_ignored(init, patterns), f".dockerignore leaves out {init} (package {name})"
    assert not is_ignored("pyproject.toml", patterns)
    assert not is_ignored("setup.py", patterns)
    assert is_ignored("agent/cache/_fastio.cpython-311-x86_64-linux-gnu.so", patterns)  # built in the image
    readme = tomllib.loads((REPO / "pyproject.toml").read_text())["project"].get("readme")
    if isinstance(readme, str):
        assert not is_ignored(readme, patterns), f".dockerignore leaves out {readme}, which pyproject names"


def test_the_runtime_stage_installs_podman_and_configures_it_for_the_agent_pod():
    """deploy/ runs builds through podman in the agent pod (docs/kubernetes.md, "Builds in containers")."""
    instructions = dockerfile_instructions()
    runtime = instructions[max(i for i, (kind, _) in enumerate(instructions) if kind == "FROM") :]
    runs = " ".join(value for kind, value in runtime if kind == "RUN")
    installs = re.search(r"apt-get install -y --no-install-recommends ([^&]+)", runs)
    assert installs, "the runtime stage installs podman with apt-get"
    packages = set(installs.group(1).split())
    assert {"podman", "runc", "catatonit", "containernetworking-plugins", "iptables"} <= packages
    # The RuntimeDefault seccomp profile blocks keyctl: runc must not make a session keyring per build.
    assert re.search(r"'\[containers\]'\s+'keyring = false'", runs)
    assert "'graphroot = \"/var/lib/stoker/podman/storage\"'" in runs
