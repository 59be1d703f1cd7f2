"""The rollout file: the strict loader, its published JSON Schema, and the example in docs/rollouts.md."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from stoker.coordinator.rollouts import rollout_file as rf

ROOT = Path(__file__).resolve().parents[3]
HEAD = "apiVersion: stoker.dev/v1\nkind: Rollout\nservice: web\n"


def docs_example() -> str:
    """The YAML block after the ``rollout-file-example`` marker in docs/rollouts.md, exactly."""
    text = (ROOT / "docs" / "rollouts.md").read_text()
    m = re.search(r"<!-- rollout-file-example -->\n```yaml\n(.*?)```", text, re.S)
    assert m, "docs/rollouts.md lost its rollout-file-example block"
    return m.group(1)


def published_schema() -> dict:
    return json.loads((ROOT / "docs" / "rollout.schema.json").read_text())


def test_the_published_schema_is_the_loaders_own():
    assert published_schema() == json.loads(rf.schema_json())
    jsonschema.Draft202012Validator.check_schema(published_schema())


def test_the_docs_example_loads_and_satisfies_the_published_schema():
    text = docs_example()
    jsonschema.validate(__import__("yaml").safe_load(text), published_schema())
    spec = rf.load(text, "rollout.yaml").with_version("v2")
    assert spec.service == "web" and spec.version == "v2" and spec.target == "local"
    assert [(s.share, s.pause, s.bake_s, s.zone_first) for s in spec.steps] == [
        (10.0, False, None, False),
        (50.0, False, 120.0, True),
        (0.0, True, None, False),
        (100.0, False, None, True),
    ]
    assert spec.steps[2].timeout_s == 3600 and spec.steps[2].on_timeout == "rollback"
    assert spec.bake_s == 60 and spec.min_requests == 100 and spec.post_bake_s == 30
    assert spec.analysis["metrics"]["errors"] == 'code=~"5.."'
    assert [w["format"] for w in spec.webhooks] == ["slack", "json"]
    assert spec.webhooks[1]["events"] == list(rf.EVENTS)


BAD = [
    # (file body after the head, "line: field" the message names, problem, the schema refuses it too)
    (
        "plan:\n  steps:\n    - share: 5\n      shares: 6\n    - share: 100\n",
        "7: plan.steps[1].shares",
        "unknown key",
        True,
    ),
    ("colour: blue\n", "4: colour", "unknown key", True),
    ("target:\n  kind: local\n  nmespace: x\n", "6: target.nmespace", "unknown key", True),
    (
        "plan:\n  steps:\n    - share: 0\n    - share: 100\n",
        "6: plan.steps[1].share",
        "must be in (0, 100]",
        True,
    ),
    (
        "plan:\n  steps:\n    - share: -5\n    - share: 100\n",
        "6: plan.steps[1].share",
        "must be in (0, 100]",
        True,
    ),
    (
        "plan:\n  steps:\n    - share: 5\n    - share: 150\n",
        "7: plan.steps[2].share",
        "must be in (0, 100]",
        True,
    ),
    (
        "plan:\n  steps:\n    - share: '5'\n    - share: 100\n",
        "6: plan.steps[1].share",
        "must be number",
        True,
    ),
    (
        "plan:\n  steps:\n    - share: 50\n    - share: 20\n    - share: 100\n",
        "7: plan.steps[2].share",
        "above the previous",
        False,
    ),
    ("plan:\n  steps:\n    - share: 50\n", "5: plan.steps", "last step with a share must be 100", False),
    (
        "plan:\n  steps:\n    - share: 50\n      pause: {}\n    - share: 100\n",
        "6: plan.steps[1]",
        "either a share or a pause",
        False,
    ),
    ("plan:\n  bake: 10 parsecs\n", "5: plan.bake", "does not match", True),
    (
        "analysis:\n  source: prometheus\n  queries:\n    requests: 'sum(x{job=\"{{servce}}\"})'\n",
        "7: analysis.queries.requests",
        "unknown placeholder {{servce}}",
        False,
    ),
    (
        "analysis:\n  source: prometheus\n  guardrails:\n    - name: fds\n"
        "      query: 'max(fds{v=\"{{ver}}\"})'\n      max: 5\n",
        "8: analysis.guardrails[1].query",
        "unknown placeholder {{ver}}",
        False,
    ),
    (
        "analysis:\n  guardrails:\n    - {name: x, query: up, max: 1}\n",
        "5: analysis.guardrails",
        "needs source: prometheus",
        False,
    ),
    (
        "analysis:\n  metrics:\n    errors: 'code=5..'\n",
        "6: analysis.metrics.errors",
        "cannot read a label matcher",
        False,
    ),
    (
        "notifications:\n  webhooks:\n    - url: file:///etc/passwd\n",
        "6: notifications.webhooks[1].url",
        "does not match",
        True,
    ),
    (
        "notifications:\n  webhooks:\n    - url: http://x\n      events: [deployed]\n",
        "7: notifications.webhooks[1].events[1]",
        "must be one of",
        True,
    ),
    ("plan:\n  bake: 1s\n  bake: 2s\n", "6: bake", "duplicate key", False),
    ("target: &t {kind: local}\nplan: *t\n", "5", "anchors and aliases are not allowed", False),
    ("service2: [1\n", "5", "not valid YAML", False),
]


@pytest.mark.parametrize("body,where,problem,schema_too", BAD, ids=[b[1] + " " + b[2] for b in BAD])
def test_bad_files_are_refused_naming_the_line_and_field(body, where, problem, schema_too):
    with pytest.raises(rf.RolloutFileError) as err:
        rf.load(HEAD + body, "r.yaml").with_version("v2")
    message = str(err.value)
    assert message.startswith(f"r.yaml:{where}"), message
    assert problem in message, message
    assert "\n" not in message
    if schema_too:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(__import__("yaml").safe_load(HEAD + body), published_schema())


def test_a_missing_head_and_a_non_mapping_are_refused():
    with pytest.raises(rf.RolloutFileError, match=r"^r.yaml:1: \(top\): apiVersion: required"):
        rf.load("service: web\n", "r.yaml")
    with pytest.raises(rf.RolloutFileError, match=r"^r.yaml:1: \(top\): must be a mapping"):
        rf.load("- a\n- b\n", "r.yaml")
    with pytest.raises(rf.RolloutFileError, match="larger than 64 KiB"):
        rf.load(HEAD + "#" * 70_000, "r.yaml")


def test_error_selectors_read_like_promql_matchers():
    assert rf.parse_selector('code=~"5..", method!="GET"') == [("code", "=~", "5.."), ("method", "!=", "GET")]
    assert rf.parse_selector('grpc_code!="OK"') == [("grpc_code", "!=", "OK")]
    with pytest.raises(ValueError):
        rf.parse_selector("code=5..")


def stoker(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stoker.cli.main", "rollout", *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_cli_validate_prints_the_plan_or_one_line_naming_the_problem(tmp_path):
    good = tmp_path / "rollout.yaml"
    good.write_text(docs_example())
    ok = stoker("validate", "-f", str(good))
    assert ok.returncode == 0, ok.stderr
    assert (
        "step 2/4: 50 % (zone-a 2/4, zone-b 2/4), first zone first; bake 120 s and >= 100 requests"
        in ok.stdout
    )
    assert (
        '  analysis: scrape; requests stoker_sample_requests_total, errors code=~"5..", latency '
        "stoker_sample_request_duration_seconds; 0 query template(s), 0 guardrail(s)" in ok.stdout
    )
    assert (
        "  webhook: https://hooks.slack.com/… (slack: paused, verdict, succeeded, rolled_back)" in ok.stdout
    )
    assert "XXXXXXXX" not in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(docs_example().replace("    - share: 50\n", "    - share: 500\n"))
    line = bad.read_text().splitlines().index("    - share: 500") + 1
    refused = stoker("validate", "-f", str(bad))
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.strip().splitlines() == [
        f"stoker: {bad}:{line}: plan.steps[2].share: must be in (0, 100], got 500"
    ]
    missing = stoker("validate", "-f", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    schema = stoker("schema")
    assert json.loads(schema.stdout) == published_schema()


def test_cli_start_from_a_bad_file_or_without_a_version_is_one_line_before_any_rpc(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(HEAD + "plan:\n  steps:\n    - share: 5\n    - share: 100\n      colour: red\n")
    nowhere = "127.0.0.1:1"  # never dialled: the file is refused first
    refused = stoker("start", "-f", str(bad), "--version", "v2", "--coordinator", nowhere)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        f"stoker: {bad}:8: plan.steps[2].colour: unknown key (known here: bake, min_requests, pause, share, "
        "zone_first)"
    ]
    good = tmp_path / "good.yaml"
    good.write_text(docs_example())
    no_version = stoker("start", "-f", str(good), "--coordinator", nowhere)
    assert no_version.returncode == 2 and no_version.stderr.strip().splitlines() == [
        "stoker: --version: required with -f (the version or image to roll out)"
    ]
    mixed = stoker("start", "-f", str(good), "--version", "v2", "--bake", "5", "--coordinator", nowhere)
    assert mixed.returncode == 2 and "--bake cannot be combined with -f" in mixed.stderr
