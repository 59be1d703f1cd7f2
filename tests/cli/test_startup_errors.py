"""Start-up mistakes end in one clear line, not a Python traceback (issue 17, item 8). Real processes."""

from __future__ import annotations

import argparse
import subprocess
import sys

from stoker.cli.main import build_parser


def test_blobs_without_a_scheme_is_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "stoker.cli.main", "agent", "--name", "n1", "--blobs", str(tmp_path / "blobs"),
         "--cache-dir", str(tmp_path / "cache"), "--work-dir", str(tmp_path / "work"),
         "--coordinator", "127.0.0.1:1", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
         "--executor", "process"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert (
        last == f"stoker agent: blob store URL '{tmp_path / 'blobs'}': use file:///path or s3://bucket/prefix"
    )


def test_every_agent_flag_says_what_it_is_for():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    agent = sub.choices["agent"]
    silent = [a.option_strings[0] for a in agent._actions if a.option_strings and not a.help]
    assert silent == [], f"agent flags without help: {silent}"
