"""Fixtures for the fault tests: the real fleet (tests/conftest.py), a real S3 server, a fault proxy."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # s3_fault_proxy beside this file

from s3_fault_proxy import FaultProxy

# The cache tests already know how to start SeaweedFS (`weed mini`) on loopback: reuse their fixtures.
_spec = importlib.util.spec_from_file_location(
    "stoker_cache_test_fixtures", Path(__file__).parent.parent / "cache" / "conftest.py"
)
_cache_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_cache_fixtures)
seaweed_endpoint = _cache_fixtures.seaweed_endpoint
_aws_env = _cache_fixtures._aws_env


@pytest.fixture
def fault_proxy(seaweed_endpoint):
    host, port = seaweed_endpoint.removeprefix("http://").split(":")
    proxy = FaultProxy((host, int(port))).start()
    yield proxy
    proxy.stop()
