"""The writer is a setting (cache.writer), chosen when the cache is built; nothing happens at import."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from stoker.agent import config as agent_config
from stoker.agent.cache.factory import open_cache
from stoker.agent.cache.writers import choose_writer, load_compiled


def test_the_old_variable_still_selects_the_python_writer_and_the_setting_wins() -> None:
    assert agent_config.load(environ={}).cache.writer == "auto"
    assert agent_config.load(environ={"STOKER_CACHE_WRITER": "python"}).cache.writer == "python-processes"
    assert agent_config.load(environ={"STOKER_CACHE_WRITER": "other"}).cache.writer == "auto"
    both = {"STOKER_CACHE_WRITER": "python", "STOKER_AGENT_CACHE_WRITER": "python-threads"}
    assert agent_config.load(environ=both).cache.writer == "python-threads"


@pytest.mark.parametrize(
    ("setting", "compiled", "forked"),
    [
        ("auto", True, False),
        ("compiled", True, False),
        ("python-processes", False, True),
        ("python-threads", False, False),
    ],
)
def test_the_factory_builds_the_writer_the_setting_names(
    tmp_path: Path, setting: str, compiled: bool, forked: bool
) -> None:
    assert load_compiled() is not None, (
        "the compiled writer is not built: `.venv/bin/pip install -e .` builds it"
    )
    settings = replace(
        agent_config.CacheSettings(),
        dir=str(tmp_path / "store"),
        blobs=f"file://{tmp_path / 'blobs'}",
        writer=setting,
    )
    cache = open_cache(settings)
    writer = cache.writing.writer  # type: ignore[attr-defined]
    assert (writer.compiled is not None, writer.forked) == (compiled, forked)
    assert cache.processes == forked  # type: ignore[attr-defined]


def test_an_unknown_writer_is_refused(tmp_path: Path) -> None:
    settings = replace(
        agent_config.CacheSettings(),
        dir=str(tmp_path / "store"),
        blobs=f"file://{tmp_path / 'blobs'}",
        writer="fast",
    )
    with pytest.raises(ValueError, match="cache.writer must be one of auto, compiled, python-processes"):
        open_cache(settings)


def test_the_umask_is_read_when_the_writer_is_chosen_not_at_import() -> None:
    code = (
        "import os, sys\n"
        "def refuse(_mask): raise AssertionError('umask read at import')\n"
        "real, os.umask = os.umask, refuse\n"
        "import stoker.agent.cache.content_cache, stoker.agent.cache.factory, stoker.agent.cache.cli\n"
        "os.umask = real\n"
        "old = os.umask(0o027)\n"
        "from stoker.agent.cache.writers import choose_writer\n"
        "print(oct(choose_writer('python-threads').umask), oct(os.umask(old)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0o27", "0o27"]  # read, and put back


def test_choose_writer_reads_the_current_umask() -> None:
    old = os.umask(0o077)
    try:
        assert choose_writer("python-threads").umask == 0o077
    finally:
        os.umask(old)
