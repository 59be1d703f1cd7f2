"""stoker's dashboards and alerting rules (deploy/monitoring/generate.py and what it writes).

Offline: the committed files are what the generator makes; ``promtool check rules`` accepts the plain rules
file and the PrometheusRule's groups, which are the same; ``promtool test rules`` shows each alert firing on
synthetic series past its threshold and not before; the Grafana component renders the dashboards into
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


def firing(alert: str, at: str, *labels: dict) -> dict:
    """A promtool alert_rule_test: ``alert`` firing at ``at`` with each of ``labels`` (none: not firing)."""
    severity = next(a.severity for a in gen.ALERTS if a.name == alert)
    return {
        "eval_time": at,
        "alertname": alert,
        "exp_alerts": [{"exp_labels": {"severity": severity, **extra}} for extra in labels],
    }


C = {"job": "stoker-coordinator", "instance": "c:9100"}
A1 = {"job": "stoker-agent", "instance": "a1:9101"}
A2 = {"job": "stoker-agent", "instance": "a2:9101"}


def series(name: str, labels: dict, values: str) -> dict:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def hits(warm_yesterday: int, warm_today: int) -> list[dict]:
    """Finished builds by warmth every 10 minutes, 100 per step: ``warm_*`` of them warm, for 24 h and then
    for 2 h more."""
    out = []
    for warmth, yesterday, today in (
        ("warm", warm_yesterday, warm_today),
        ("cold", 100 - warm_yesterday, 100 - warm_today),
    ):
        at_24h = yesterday * 144
        out.append(
            series(
                "stoker_coordinator_cache_hits_total",
                {**C, "warmth": warmth},
                f"0+{yesterday}x144 {at_24h + today}+{today}x12",
            )
        )
    return out


def bucket_series(le_counts: dict[str, int]) -> list[dict]:
    """Queue-wait histogram buckets, each growing by its count a minute."""
    return [
        series("stoker_coordinator_queue_wait_seconds_bucket", {**C, "le": le}, f"0+{per_minute}x40")
        for le, per_minute in le_counts.items()
    ]


RULE_TESTS = [
    {
        "interval": "1m",
        "input_series": [series("up", C, "1 1 0x10"), series("up", A1, "1 0x15"), series("up", A2, "1x15")],
        "alert_rule_test": [
            firing("StokerCoordinatorDown", "4m"),  # down 2 minutes: pending
            firing("StokerCoordinatorDown", "8m", C),
            firing("StokerAgentDown", "5m"),
            firing("StokerAgentDown", "12m", A1),  # not a2, which is up
        ],
    },
    {  # no coordinator target at all
        "interval": "1m",
        "input_series": [series("up", A1, "1x10")],
        "alert_rule_test": [firing("StokerCoordinatorDown", "7m", {"job": "stoker-coordinator"})],
    },
    {
        "interval": "1m",
        "input_series": [
            series("stoker_coordinator_nodes_lost_total", C, "0 0 0 1 1"),
            series("stoker_coordinator_rollouts_ended_total", {**C, "phase": "rolled_back"}, "0 0 1 1"),
            series("stoker_coordinator_rollouts_ended_total", {**C, "phase": "failed"}, "0x4"),
            series("stoker_agent_disk_size_bytes", A1, "100e9x20"),
            series("stoker_agent_disk_available_bytes", A1, "5e9x20"),
            series("stoker_agent_disk_size_bytes", A2, "100e9x20"),
            series("stoker_agent_disk_available_bytes", A2, "50e9x20"),
        ],
        "alert_rule_test": [
            firing("StokerAgentsLost", "2m"),
            firing("StokerAgentsLost", "4m", C),
            firing("StokerRolloutRolledBack", "1m"),
            firing("StokerRolloutRolledBack", "3m", {**C, "phase": "rolled_back"}),
            firing("StokerRolloutFailed", "3m"),
            firing("StokerNodeDiskNearlyFull", "5m"),  # pending for 10 minutes
            firing("StokerNodeDiskNearlyFull", "12m", A1),  # 5 % free; a2 has half
        ],
    },
    {  # every wait between 5 and 10 minutes
        "interval": "1m",
        "input_series": bucket_series({"60": 0, "300": 0, "600": 10, "+Inf": 10}),
        "alert_rule_test": [firing("StokerQueueWaitHigh", "10m"), firing("StokerQueueWaitHigh", "30m", {})],
    },
    {  # every wait under a minute
        "interval": "1m",
        "input_series": bucket_series({"60": 10, "300": 10, "600": 10, "+Inf": 10}),
        "alert_rule_test": [firing("StokerQueueWaitHigh", "30m")],
    },
    {  # 90 % warm yesterday, 30 % today
        "interval": "10m",
        "input_series": hits(90, 30),
        "alert_rule_test": [
            firing("StokerCacheHitRateFalling", "23h"),
            firing("StokerCacheHitRateFalling", "26h", {}),
        ],
    },
    {  # 30 % warm both days: low, but not falling
        "interval": "10m",
        "input_series": hits(30, 30),
        "alert_rule_test": [firing("StokerCacheHitRateFalling", "26h")],
    },
]


def test_each_alert_fires_when_it_should_and_not_before(tmp_path):
    """``promtool test rules`` on synthetic series: each alert fires past its threshold for its ``for``, with
    the labels that say where, and stays quiet on the healthy side. Annotations are left out of the copy of
    the rules tested here (promtool would compare their rendered text too); the other tests check them."""
    rules = yaml.safe_load(gen.RULES_FILE.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    tested = {t["alertname"] for case in RULE_TESTS for t in case["alert_rule_test"]}
    assert tested == {a.name for a in gen.ALERTS}, "an alert without a promtool test"
    (tmp_path / "tests.yaml").write_text(
        yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": RULE_TESTS})
    )
    result = subprocess.run(
        [require_binary("promtool"), "test", "rules", "tests.yaml"],
        cwd=tmp_path,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr
