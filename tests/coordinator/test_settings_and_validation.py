"""Settings loading (defaults, file, environment, overrides) and request validation."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from stoker.agent import config as agent_config
from stoker.common.settings import SettingsError
from stoker.coordinator import config as coord_config
from stoker.coordinator.core.errors import InvalidArgument
from stoker.coordinator.rpc import validate
from stoker.v1 import agent_pb2, common_pb2


def test_environment_file_and_overrides_layer_in_order(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[server]\nlisten = "0.0.0.0:1"\nmetrics_listen = "0.0.0.0:2"\n[nodes]\nlease_ttl_s = 3\n')
    cfg = coord_config.load(
        str(f),
        environ={"STOKER_COORDINATOR_NODES_LEASE_TTL_S": "7.5"},
        overrides={"server": {"listen": "127.0.0.1:9", "metrics_listen": None}},
    )
    assert cfg.server.listen == "127.0.0.1:9"  # flag wins
    assert cfg.server.metrics_listen == "0.0.0.0:2"  # None override leaves the file's value
    assert cfg.nodes.lease_ttl_s == 7.5  # environment beats file
    assert cfg.builds.max_attempts == 3  # default


def test_unknown_keys_are_errors(tmp_path):
    with pytest.raises(SettingsError, match="STOKER_AGENT_CACHE_BUDGET"):
        agent_config.load(environ={"STOKER_AGENT_CACHE_BUDGET": "1"})
    f = tmp_path / "a.toml"
    f.write_text("[cache]\nbudjet_bytes = 5\n")
    with pytest.raises(SettingsError, match="cache.budjet_bytes"):
        agent_config.load(str(f), environ={})
    with pytest.raises(SettingsError, match="node.slots"):
        agent_config.load(environ={"STOKER_AGENT_NODE_SLOTS": "many"})


def test_labels_and_bools_parse_from_environment():
    cfg = agent_config.load(
        environ={"STOKER_AGENT_NODE_LABELS": "arch=arm64,pool=big", "STOKER_AGENT_CACHE_SYNCFS": "true"}
    )
    assert cfg.node.labels == {"arch": "arm64", "pool": "big"}
    assert cfg.cache.syncfs is True


def spec(**kw) -> common_pb2.BuildSpec:
    base = {
        "workspace": "web",
        "command": ["make"],
        "cache": common_pb2.CacheSpec(key="web/k", paths=["node_modules"]),
    }
    base.update(kw)
    return common_pb2.BuildSpec(**base)


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"workspace": ""}, "spec.workspace"),
        ({"command": []}, "spec.command"),
        ({"timeout_s": -1}, "spec.timeout_s"),
        ({"cache": common_pb2.CacheSpec(key="k", paths=["../x"])}, "spec.cache.paths[0]"),
        ({"cache": common_pb2.CacheSpec(key="k", paths=["/abs"])}, "spec.cache.paths[0]"),
        ({"cache": common_pb2.CacheSpec(key="k", paths=["a/../../x"])}, "spec.cache.paths[0]"),
        ({"cache": common_pb2.CacheSpec(key="bad\x07key", paths=["x"])}, "spec.cache.key"),
        ({"cache": common_pb2.CacheSpec(key="k" * 600, paths=["x"])}, "spec.cache.key"),
        (
            {"cache": common_pb2.CacheSpec(key="k", restore_keys=[""], paths=["x"])},
            "spec.cache.restore_keys[0]",
        ),
        ({"cache": common_pb2.CacheSpec(key="k")}, "spec.cache.paths"),
        ({"files": {"../evil": b"x"}}, "spec.files"),
    ],
)
def test_bad_build_specs_name_the_field(bad, field):
    with pytest.raises(InvalidArgument) as err:
        validate.build_spec(spec(**bad), need_command=True, max_files_bytes=1024, max_timeout_s=100)
    assert str(err.value).startswith(field)


def test_good_spec_passes_and_placement_needs_no_command():
    validate.build_spec(spec(), need_command=True, max_files_bytes=1024, max_timeout_s=100)
    validate.build_spec(spec(command=[]), need_command=False, max_files_bytes=1024, max_timeout_s=100)


def test_registration_checks():
    with pytest.raises(InvalidArgument, match="^node"):
        validate.registration(agent_pb2.RegisterRequest(node=" ", slots=1))
    with pytest.raises(InvalidArgument, match="^slots"):
        validate.registration(agent_pb2.RegisterRequest(node="n", slots=-2))


@pytest.mark.parametrize(
    "environ, setting",
    [
        ({"STOKER_COORDINATOR_ROLLOUTS_METRICS": "promql"}, "rollouts.metrics"),
        ({"STOKER_COORDINATOR_ROLLOUTS_CANARY_PERCENT": "100"}, "rollouts.canary_percent"),
        ({"STOKER_COORDINATOR_ROLLOUTS_CANARY_PERCENT": "nan"}, "rollouts.canary_percent"),
        ({"STOKER_COORDINATOR_ROLLOUTS_BAKE_S": "-1"}, "rollouts.bake_s"),
        ({"STOKER_COORDINATOR_ROLLOUTS_POST_BAKE_S": "inf"}, "rollouts.post_bake_s"),
        ({"STOKER_COORDINATOR_ROLLOUTS_MIN_REQUESTS": "-1"}, "rollouts.min_requests"),
        ({"STOKER_COORDINATOR_ROLLOUTS_INSTANCES_PER_ZONE": "101"}, "rollouts.instances_per_zone"),
        ({"STOKER_COORDINATOR_ROLLOUTS_ZONES": "a,a"}, "rollouts.zones"),
    ],
)
def test_rollout_settings_are_refused_when_the_configuration_loads(environ, setting):
    # These used to pass the load and fail later: the metrics provider when the server was built, as an
    # InvalidArgument; the spec defaults only at StartRollout, as INVALID_ARGUMENT blaming the request.
    with pytest.raises(SettingsError, match=f"^setting {setting}: "):
        coord_config.load(environ=environ)
    assert (
        coord_config.load(environ={"STOKER_COORDINATOR_ROLLOUTS_METRICS": "prometheus"}).rollouts.metrics
        == "prometheus"
    )


def test_the_coordinator_command_names_a_bad_setting_and_stops(tmp_path):
    env = {**os.environ, "STOKER_COORDINATOR_ROLLOUTS_METRICS": "promql"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "stoker.cli.main",
            "coordinator",
            "--state",
            str(tmp_path / "c.db"),
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "setting rollouts.metrics: 'promql' is neither 'scrape' nor 'prometheus'" in done.stderr
    assert not (tmp_path / "c.db").exists()  # refused before anything was opened


@pytest.mark.parametrize(
    "value, message",
    [("x" * 257, "request_id: longer than 256 bytes"), ("a\x00b", "request_id: must hold printable")],
)
def test_a_bad_request_id_is_refused(value, message):
    with pytest.raises(InvalidArgument, match=message):
        validate.request_id(value)
    validate.request_id("gh-run-1234-attempt-2")  # an ordinary one passes
