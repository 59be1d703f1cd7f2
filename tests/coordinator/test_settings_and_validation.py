"""Settings loading (defaults, file, environment, overrides) and request validation."""

from __future__ import annotations

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
    cfg = coord_config.load(str(f), environ={"STOKER_COORDINATOR_NODES_LEASE_TTL_S": "7.5"},
                            overrides={"server": {"listen": "127.0.0.1:9", "metrics_listen": None}})
    assert cfg.server.listen == "127.0.0.1:9"          # flag wins
    assert cfg.server.metrics_listen == "0.0.0.0:2"    # None override leaves the file's value
    assert cfg.nodes.lease_ttl_s == 7.5                # environment beats file
    assert cfg.builds.max_attempts == 3                # default


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
    cfg = agent_config.load(environ={"STOKER_AGENT_NODE_LABELS": "arch=arm64,pool=big",
                                     "STOKER_AGENT_CACHE_SYNCFS": "true"})
    assert cfg.node.labels == {"arch": "arm64", "pool": "big"}
    assert cfg.cache.syncfs is True


def spec(**kw) -> common_pb2.BuildSpec:
    base = dict(workspace="web", command=["make"], cache=common_pb2.CacheSpec(key="web/k", paths=["node_modules"]))
    base.update(kw)
    return common_pb2.BuildSpec(**base)


@pytest.mark.parametrize("bad, field", [
    (dict(workspace=""), "spec.workspace"),
    (dict(command=[]), "spec.command"),
    (dict(timeout_s=-1), "spec.timeout_s"),
    (dict(cache=common_pb2.CacheSpec(key="k", paths=["../x"])), "spec.cache.paths[0]"),
    (dict(cache=common_pb2.CacheSpec(key="k", paths=["/abs"])), "spec.cache.paths[0]"),
    (dict(cache=common_pb2.CacheSpec(key="k", paths=["a/../../x"])), "spec.cache.paths[0]"),
    (dict(cache=common_pb2.CacheSpec(key="bad\x07key", paths=["x"])), "spec.cache.key"),
    (dict(cache=common_pb2.CacheSpec(key="k" * 600, paths=["x"])), "spec.cache.key"),
    (dict(cache=common_pb2.CacheSpec(key="k", restore_keys=[""], paths=["x"])), "spec.cache.restore_keys[0]"),
    (dict(cache=common_pb2.CacheSpec(key="k")), "spec.cache.paths"),
    (dict(files={"../evil": b"x"}), "spec.files"),
])
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
