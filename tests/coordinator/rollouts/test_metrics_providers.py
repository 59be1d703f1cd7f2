"""The two metrics providers against real servers: sample-service processes on loopback, and a real Prometheus
(Debian package ``prometheus``) started by the test on a free loopback port, with its own configuration and
storage directory, scraping those processes every second. Whatever Debian's packaging may have started as a
system service is not used."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import time
import urllib.request

import pytest

from stoker.coordinator.rollouts.machine import Instance, Spec
from stoker.coordinator.rollouts.metrics_providers import (
    MetricNames,
    MetricsUnavailable,
    PrometheusMetrics,
    ScrapeMetrics,
    parse_exposition,
)
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
    # +30 ms lands past 20 ms; most within 50 ms (not all: on a loaded 2-core machine a few took longer)
    assert dict(v2.buckets)[0.02] == 0 and dict(v2.buckets)[0.05] > 25 and dict(v2.buckets)[math.inf] == 50
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


def test_templates_render_per_track_and_zone_and_escape_what_they_insert():
    provider = PrometheusMetrics(
        "http://127.0.0.1:1",
        templates={"requests": 'sum by (instance) (rpc_total{app="{{service}}",version="{{version}}",'
                   'instance=~"{{instance}}",track="{{track}}"})'},
    )  # fmt: skip
    spec = Spec(service="shop", version='v2"evil')
    instances = [
        Instance("a1", "zone-a", "v1", True, address="127.0.0.1:9001"),
        Instance("a2", "zone-a", 'v2"evil', True, address="127.0.0.1:9002"),
        Instance("b1", "zone-b", "v1", True, address="127.0.0.1:9003"),
    ]
    groups = provider._groups(spec, instances)
    assert [(g.track, g.zone) for g in groups] == [
        ("baseline", "zone-a"),
        ("baseline", "zone-b"),
        ("canary", "zone-a"),
    ]
    canary = provider._render(provider.template("requests"), "shop", groups[2])
    assert canary == (
        'sum by (instance) (rpc_total{app="shop",version="v2\\"evil",instance=~"127\\\\.0\\\\.0\\\\.1:9002",'
        'track="canary"})'
    )
    # the generated defaults use the configured names and only {{service}}: one query for every group
    named = PrometheusMetrics(
        "http://x", names=MetricNames("shop_rpc_total", 'grpc_code!="OK"', "shop_seconds", "app")
    )
    assert named.queries("shop") == (
        'sum by (instance) (shop_rpc_total{app="shop"})',
        'sum by (instance) (shop_rpc_total{app="shop",grpc_code!="OK"})',
        'sum by (instance, le) (shop_seconds_bucket{app="shop"})',
    )


def test_the_scrape_reads_own_names_and_grpc_codes_and_a_missing_counter_is_no_data():
    from prometheus_client import generate_latest

    from stoker.demo.shop_service import ERRORS, Shop

    shop = Shop("i-1", "v2", {})
    for code, n in (("OK", 40), ("Unavailable", 3), ("NotFound", 5)):
        shop.handled.labels("unary", "shop.v1.Catalog", "GetItem", code).inc(n)
    shop.handling.labels("unary", "shop.v1.Catalog", "GetItem").observe(0.003)
    text = generate_latest(shop.registry).decode()
    names = MetricNames("shop_grpc_server_handled_total", ERRORS, "shop_grpc_server_handling_seconds")
    got = parse_exposition(text, names)
    assert got is not None and (got.requests, got.errors) == (48, 3)  # NotFound is not an error here
    assert dict(got.buckets)[0.004] == 1
    assert parse_exposition(text, MetricNames("shop_rpc_total")) is None
