"""stoker's dashboards and alerting rules (deploy/monitoring/generate.py and what it writes).

Offline: the committed files are what the generator makes; ``promtool check rules`` accepts the plain rules
file and the PrometheusRule's groups, which are the same; the Grafana component renders the dashboards into
a ConfigMap the sidecar loads; every alert has its runbook section in docs/monitoring.md.

Live: a real Prometheus (Debian package ``prometheus``, started here on a free loopback port with its own
configuration and storage) scrapes a real coordinator and two agents on loopback that have run builds, with
the rules file loaded, and every PromQL expression of the dashboards and of the rules is evaluated through
its HTTP API. See the live test's docstring for what "returns series" means for an alert.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import types
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import grpc
import pytest
import yaml

from stoker.v1 import build_pb2, build_pb2_grpc, common_pb2
from tests.helpers.fleet import Fleet
from tests.helpers.net import free_port
from tests.helpers.rollouts import require_binary

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs" / "monitoring.md"


def load_generator() -> types.ModuleType:
    """deploy/monitoring/generate.py as a module, compiled here so that no __pycache__ lands in deploy/
    (test_manifests reads every file there as text)."""
    path = REPO / "deploy" / "monitoring" / "generate.py"
    module = types.ModuleType("stoker_monitoring_generate")
    module.__file__ = str(path)
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(path.read_text(), str(path), "exec"), module.__dict__)
    return module


gen = load_generator()


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, expr) of every query in the committed dashboard JSON."""
    out = []
    for path in sorted(gen.DASHBOARDS_DIR.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                out.append((path.name, panel["title"], target["expr"]))
    return out


# ---------------------------------------------------------------- offline


def test_the_committed_files_are_what_the_generator_makes():
    assert gen.main(["--check"]) == 0, "run: .venv/bin/python deploy/monitoring/generate.py"
    assert {p.name for p in gen.DASHBOARDS_DIR.glob("*.json")} == set(gen.DASHBOARDS)


def promtool_check(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [require_binary("promtool"), "check", "rules", str(path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_promtool_accepts_the_rules_file_and_the_prometheus_rule_holds_the_same_groups(tmp_path):
    plain = yaml.safe_load(gen.RULES_FILE.read_text())
    result = promtool_check(gen.RULES_FILE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(gen.ALERTS)} rules found" in result.stdout

    operator_rule = yaml.safe_load(gen.PROMETHEUS_RULE_FILE.read_text())
    assert operator_rule["kind"] == "PrometheusRule"
    assert operator_rule["spec"]["groups"] == plain["groups"]
    extracted = tmp_path / "from-prometheusrule.yaml"
    extracted.write_text(yaml.safe_dump({"groups": operator_rule["spec"]["groups"]}))
    result = promtool_check(extracted)
    assert result.returncode == 0, result.stdout + result.stderr

    # the check can fail: a misspelt function in one expression
    plain["groups"][0]["rules"][0]["expr"] = "rat(stoker_coordinator_builds_submitted_total[5m]) > 0"
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(plain))
    assert promtool_check(broken).returncode != 0


def test_every_alert_says_what_to_do_and_has_a_runbook_section():
    docs = DOCS.read_text()
    headings = {line.lstrip("#").strip() for line in docs.splitlines() if line.startswith("### ")}
    for alert in gen.ALERTS:
        assert alert.name in headings, f"docs/monitoring.md has no '### {alert.name}' section"
        rule = alert.rule()
        assert rule["annotations"]["summary"] and len(rule["annotations"]["description"]) > 80
        assert rule["labels"]["severity"] in {"critical", "warning"}
        assert rule["expr"].startswith(f"({alert.signal})")


def test_the_grafana_component_loads_the_three_dashboards_for_the_sidecar():
    from tests.deploy.test_manifests import render

    (config_map,) = render(gen.DASHBOARDS_DIR)
    assert config_map["kind"] == "ConfigMap" and config_map["metadata"]["name"] == "stoker-dashboards"
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    boards = {name: json.loads(text) for name, text in config_map["data"].items()}
    assert set(boards) == {"stoker-fleet.json", "stoker-cache.json", "stoker-rollouts.json"}
    assert len({b["uid"] for b in boards.values()}) == 3
    for board in boards.values():
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)) and all(p["targets"] for p in board["panels"])
        assert all(p["datasource"]["uid"] == "${datasource}" for p in board["panels"])


# ---------------------------------------------------------------- live


def wait_http(url: str, timeout: float) -> None:
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


class PromQL:
    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: str) -> dict:
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as err:  # a bad query is a 400 with the reason in its body
            return json.load(err)

    def query(self, expr: str) -> dict:
        return self.get("/api/v1/query", query=expr)


@pytest.fixture
def scraped_fleet(tmp_path):
    """A coordinator and two agents that have run builds with a cache key, scraped every second by a real
    Prometheus with stoker's rules file loaded. Yields the Prometheus URL."""
    prometheus = require_binary("prometheus")
    fleet = Fleet(tmp_path / "fleet")
    proc = None
    try:
        coordinator = fleet.start_coordinator()
        for name in ("n1", "n2"):
            fleet.start_agent(name)
        fleet.wait_ready()
        port = free_port()
        (tmp_path / "prometheus.yml").write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(gen.RULES_FILE)],
                    "scrape_configs": [
                        {
                            "job_name": "stoker-coordinator",
                            "static_configs": [{"targets": [f"127.0.0.1:{coordinator.metrics_port}"]}],
                        },
                        {
                            "job_name": "stoker-agent",
                            "static_configs": [
                                {"targets": [f"127.0.0.1:{a.metrics_port}" for a in fleet.agents.values()]}
                            ],
                        },
                    ],
                }
            )
        )
        proc = subprocess.Popen(
            [
                prometheus,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=(tmp_path / "prometheus.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        spec = common_pb2.BuildSpec(
            workspace="web",
            command=["sh", "-c", "mkdir -p nm && echo built > nm/out"],
            cache=common_pb2.CacheSpec(key="web/k1", paths=["nm"]),
        )
        with grpc.insecure_channel(coordinator.address) as channel:
            builds = build_pb2_grpc.BuildsStub(channel)
            for _ in range(3):  # cold, then warm where the first one saved its cache
                events = list(builds.SubmitBuild(build_pb2.SubmitBuildRequest(spec=spec), timeout=60))
                assert events[-1].finished.state == build_pb2.BUILD_STATE_SUCCEEDED, events[-1]
        wait_http(f"http://127.0.0.1:{port}/-/ready", 30)
        yield f"http://127.0.0.1:{port}"
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        fleet.stop()


@pytest.mark.integration
def test_every_dashboard_and_alert_expression_returns_series_from_a_live_fleet(scraped_fleet):
    """Each dashboard query must return at least one series. An alert's full expression returns nothing on a
    healthy fleet by design (its threshold filters everything out), so "returns series" is asked of its
    ``signal`` (deploy/monitoring/generate.py: the expression with the threshold and guards left off, the
    quantity the alert compares); the full expression must still evaluate without error, and Prometheus,
    which loaded the rules file, must report every rule healthy after evaluating it. Queries are retried
    for up to 30 s, as series appear with the first scrapes and rate() needs two samples."""
    prom = PromQL(scraped_fleet)
    queries = dashboard_queries()
    expected = sum(len(t["targets"]) for b in gen.DASHBOARDS.values() for t in b["panels"])
    assert len(queries) == expected > 30, "the JSON holds other queries than the definitions"
    pending = {f"{board} / {title} / {i}": expr for i, (board, title, expr) in enumerate(queries)}
    pending |= {f"alert {a.name} (signal)": a.signal for a in gen.ALERTS}
    errors: dict[str, str] = {}
    deadline = time.monotonic() + 30
    while pending and time.monotonic() < deadline:
        for what, expr in list(pending.items()):
            answer = prom.query(expr)
            if answer["status"] != "success":
                errors[what] = f"{expr}: {answer.get('error')}"
                del pending[what]
            elif answer["data"]["result"]:
                del pending[what]
        time.sleep(0.5)
    assert not errors, f"Prometheus refused these queries: {errors}"
    assert not pending, f"no series for: {json.dumps(pending, indent=1)}"

    for alert in gen.ALERTS:
        answer = prom.query(alert.expr)
        assert answer["status"] == "success", (alert.name, answer)
        if alert.name != "StokerNodeDiskNearlyFull":  # this machine's disk, whatever the fleet does
            assert not answer["data"]["result"], f"{alert.name} fires on a healthy fleet: {answer}"
    deadline = time.monotonic() + 10
    while True:
        rules = [r for g in prom.get("/api/v1/rules")["data"]["groups"] for r in g["rules"]]
        if len(rules) == len(gen.ALERTS) and all(r.get("lastEvaluation", "").startswith("2") for r in rules):
            break
        assert time.monotonic() < deadline, f"Prometheus did not evaluate every rule: {rules}"
        time.sleep(0.5)
    assert {r["name"] for r in rules} == {a.name for a in gen.ALERTS}
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
