"""Fixtures every test folder may use: a real fleet on loopback, free ports, real S3 servers, rollout fleets.

Helpers live in ``tests.helpers`` and are imported as a package; the plugins below register their fixtures.
"""

from __future__ import annotations

import pytest

from tests.helpers.fleet import Fleet
from tests.helpers.net import free_port

pytest_plugins = ["tests.helpers.s3", "tests.helpers.rollouts"]


@pytest.fixture
def port_factory():
    """Returns a function that finds a free loopback port (for servers that must keep their port)."""
    return free_port


@pytest.fixture
def fleet(tmp_path):
    f = Fleet(tmp_path)
    yield f
    f.stop()
