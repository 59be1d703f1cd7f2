"""The operator CLI through its real entry point, and the import rule that keeps the store a pure core."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from stoker.agent.cache.cli import main
from tests.helpers.cache import snapshot


def test_cli_save_restore_ls_verify_gc(tree: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("STOKER_AGENT_CACHE_DIR", str(tmp_path / "store"))
    monkeypatch.setenv("STOKER_AGENT_CACHE_BLOBS", f"file://{tmp_path / 'blobs'}")
    assert main(["--json", "save", "web/nm-1", "-w", str(tree), "-p", "node_modules"]) == 0
    saved = json.loads(capsys.readouterr().out)
    assert saved["saved"] and saved["files"] > 70
    assert (
        main(
            [
                "--json",
                "--dir",
                str(tmp_path / "other"),
                "restore",
                "web/nm-2",
                "-r",
                "web/nm-",
                "-w",
                str(tmp_path / "ws"),
                "-p",
                "node_modules",
            ]
        )
        == 0
    )
    restored = json.loads(capsys.readouterr().out)
    assert restored["restored_key"] == "web/nm-1" and restored["warmth"] == "partial"
    assert snapshot(tmp_path / "ws") == snapshot(tree)
    assert main(["ls"]) == 0
    assert "web/nm-1" in capsys.readouterr().out
    # ls PREFIX: only keys under it, with who wrote them ("-": a save by hand names no writer).
    assert main(["ls", "web/"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "KEY\tSIZE\tWRITER\tTRUST\tCREATED" and lines[2].split("\t")[:4] == [
        "web/nm-1",
        f"{saved['bytes'] / 1e6:.1f} MB",
        "-",
        "-",
    ], lines
    assert main(["ls", "other/"]) == 0 and len(capsys.readouterr().out.splitlines()) == 2
    assert main(["--json", "verify"]) == 0
    assert json.loads(capsys.readouterr().out)["checked"] == {"web/nm-1": saved["files"]}
    # Corrupt the local copy: verify must say so and fail.
    frames = sorted((tmp_path / "store" / "frames").iterdir(), key=lambda p: p.stat().st_size)[-1]
    data = bytearray(frames.read_bytes())
    data[len(data) // 2] ^= 0xFF
    frames.write_bytes(bytes(data))
    assert main(["verify"]) == 1
    assert "FAILED\tweb/nm-1" in capsys.readouterr().out
    # gc: nothing unreferenced yet; after the key is gone, its packs and manifest go too.
    assert main(["--json", "gc", "--blobs-grace-hours", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["blobs_deleted"] == 0
    shutil.rmtree(tmp_path / "blobs" / "keys")
    assert main(["--json", "gc", "--blobs-grace-hours", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["blobs_deleted"] >= 2
    assert main(["restore", "nope", "-w", str(tmp_path / "ws2"), "-p", "node_modules"]) == 0


def test_store_is_a_pure_core() -> None:
    """Importing the store (and everything it imports, transitively) loads no adapter library.

    (tests/test_contract.py checks the direct imports of every pure core; this checks the closure.)"""
    code = (
        "import sys, stoker.agent.cache.store, stoker.agent.cache.manifest, stoker.agent.cache.tree; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('boto3', 'botocore', 'grpc', 'kubernetes', 'sqlite3') or m.startswith('stoker.v1')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
