"""`stoker build`'s image, limit and sandbox flags become the spec's fields; sizes read like 2G."""

from __future__ import annotations

import argparse

import pytest

from stoker.cli.client import size, spec_from_args
from stoker.cli.main import build_parser
from stoker.v1 import common_pb2


def test_image_and_limit_flags_fill_the_spec():
    args = build_parser().parse_args(
        ["build", "--workspace", "web", "--image", "127.0.0.1:5000/ci/node:20", "--cpus", "1.5",
         "--memory", "2G", "--pids", "500", "--output-limit", "100M", "--disk", "10G", "--network", "none",
         "--", "npm", "test"]
    )  # fmt: skip
    spec = spec_from_args(args, command=True)
    assert spec.image == "127.0.0.1:5000/ci/node:20" and not spec.allow_unsandboxed
    assert spec.limits == common_pb2.BuildLimits(
        cpus=1.5,
        memory_bytes=2 * 1024**3,
        pids=500,
        output_bytes=100 * 1024**2,
        disk_bytes=10 * 1024**3,
        network="none",
    )
    assert list(spec.command) == ["npm", "test"]
    plain = spec_from_args(
        build_parser().parse_args(["build", "--workspace", "web", "--allow-unsandboxed", "--", "true"]),
        command=True,
    )
    assert plain.image == "" and plain.limits == common_pb2.BuildLimits() and plain.allow_unsandboxed
    pr = spec_from_args(
        build_parser().parse_args(
            ["build", "--workspace", "web", "--key", "k", "--ref", "pull/7", "--", "true"]
        ),
        command=True,
    )
    assert pr.cache.ref == "pull/7" and pr.cache.scope == ""  # the scope is the coordinator's to set


@pytest.mark.parametrize(
    "text, value",
    [("4096", 4096), ("512M", 512 << 20), ("2G", 2 << 30), ("1.5g", 1536 << 20), ("2GiB", 2 << 30)],
)
def test_sizes(text, value):
    assert size(text) == value


@pytest.mark.parametrize("text", ["", "G", "2X", "nan", "inf", "-inf"])
def test_bad_sizes_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError, match="is not a size"):
        size(text)


def test_a_negative_size_is_refused():
    with pytest.raises(argparse.ArgumentTypeError, match="cannot be negative"):
        size("-1G")
