"""The two metrics providers against real servers: sample-service processes on loopback, and a real Prometheus
(Debian package ``prometheus``) started by the test on a free loopback port, with its own configuration and
storage directory, scraping those processes every second. Whatever Debian's packaging may have started as a
system service is not used."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request

import pytest

from stoker.coordinator.rollouts.machine import Instance, Spec
from stoker.coordinator.rollouts.metrics_providers import MetricsUnavailable, PrometheusMetrics, ScrapeMetrics
from tests.helpers.net import free_port

pytestmark = pytest.mark.integration


def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


@pytest.fixture
def samples(tmp_path):
    """Two sample instances: v1 clean, v2 answering 20 % errors with 30 ms of added latency."""
    procs, instances = [], []
    for name, version, env in (
        ("i-1", "v1", {}),
        ("i-2", "v2", {"STOKER_SAMPLE_ERROR_RATE": "0.2", "STOKER_SAMPLE_LATENCY_MS": "30"}),
    ):
        port = free_port()
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "stoker.coordinator.rollouts.sample_service",
                    "--port",
                    str(port),
                    "--instance",
                    name,
                    "--version",
                    version,
                ],
                env={**__import__("os").environ, **env},
                stdout=(tmp_path / f"{name}.log").open("wb"),
                stderr=subprocess.STDOUT,
            )
        )
        instances.append(
            Instance(id=name, zone="zone-a", version=version, ready=True, address=f"127.0.0.1:{port}")
        )
    for inst in instances:
        wait_http(f"http://{inst.address}/ready")
    yield instances
    for p in procs:
        p.kill()
        p.wait()


def hit(instances, n: int) -> None:
    for inst in instances:
        for _ in range(n):
            try:
                urllib.request.urlopen(f"http://{inst.address}/", timeout=2).read()
            except OSError:
                pass


@pytest.fixture
def prometheus(tmp_path, samples, prometheus_binary):
    binary = prometheus_binary
    port = free_port()
    targets = [{"targets": [i.address], "labels": {"service": "web", "version": i.version}} for i in samples]
    (tmp_path / "targets.json").write_text(json.dumps(targets))
    (tmp_path / "prometheus.yml").write_text(f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: sample
    file_sd_configs:
      - files: ["{tmp_path / "targets.json"}"]
""")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=(tmp_path / "prometheus.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/-/ready", 30)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_scrape_reads_each_instances_counters(samples):
    hit(samples, 50)
    got = asyncio.run(ScrapeMetrics(2.0).sample(Spec(service="web", version="v2"), samples))
    v1, v2 = got[samples[0].address], got[samples[1].address]
    assert v1.requests == 50 and v1.errors == 0
    assert v2.requests == 50 and 0 < v2.errors < 30
    assert dict(v2.buckets)[0.02] == 0 and dict(v2.buckets)[0.05] == 50  # +30 ms lands past 20 ms
    with pytest.raises(MetricsUnavailable):
        asyncio.run(
            ScrapeMetrics(0.5).sample(
                Spec(service="web", version="v2"),
                [Instance("x", "z", "v", True, address=f"127.0.0.1:{free_port()}")],
            )
        )


def test_prometheus_answers_the_same_counters_over_promql(samples, prometheus):
    hit(samples, 40)
    provider = PrometheusMetrics(prometheus, 3.0)
    spec = Spec(service="web", version="v2")
    direct = asyncio.run(ScrapeMetrics(2.0).sample(spec, samples))
    deadline = time.monotonic() + 30
    got = {}
    while time.monotonic() < deadline:
        try:
            got = asyncio.run(provider.sample(spec, samples))
        except MetricsUnavailable:  # not scraped yet: no series is no data, never zeros
            got = {}
        if got == direct:
            break
        time.sleep(0.5)
    assert got == direct, (got, direct)
    assert got[samples[1].address].errors > 0 and got[samples[0].address].errors == 0
    assert (
        provider.queries("web")[1]
        == 'sum by (instance) (stoker_sample_requests_total{service="web",code=~"5.."})'
    )


def test_prometheus_down_is_metrics_unavailable():
    with pytest.raises(MetricsUnavailable, match="Prometheus"):
        asyncio.run(PrometheusMetrics(f"http://127.0.0.1:{free_port()}", 1.0).sample(Spec("web", "v2"), []))
