"""The workflow config: every mistake is a ConfigError naming the file, the key and the closest
known name; the shipped examples validate; docs/config.md matches the models; eqflow config."""

from __future__ import annotations

import copy
import json
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from eqflow.config import (
    ConfigFileError,
    GlobusQueueConfig,
    LocalQueueConfig,
    ServiceQueueConfig,
    load_workflow_config,
    parse_task_queue,
)
from eqflow.config_docs import render, sections
from eqflow.errors import ConfigError
from eqflow.task_queues import make_task_queue, open_task_queue

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "cfgs").glob("*.yaml"))
UUID = "00000000-0000-0000-0000-000000000000"
BASE = yaml.safe_load((ROOT / "cfgs" / "local.yaml").read_text())


def write(tmp_path: Path, cfg: dict[str, Any], name: str = "wf.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def variant(**changes: Any) -> dict[str, Any]:
    """cfgs/local.yaml with ``changes``: {"pools.ackley_pool.workres": 2} sets that key."""
    cfg = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = cfg
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return cfg


def problem_line(exc: pytest.ExceptionInfo[ConfigError], key: str) -> str:
    lines = [line for line in str(exc.value).splitlines() if f": {key}: " in line]
    assert lines, f"no problem reported at {key}:\n{exc.value}"
    return lines[0]


BAD = [  # (changes, the key path reported, the suggestion)
    ({"task_queues.local.db": "mian"}, "task_queues.local.db", "did you mean 'main'?"),
    ({"task_queues.spare": {"type": "lokal"}}, "task_queues.spare.type", "did you mean 'local'?"),
    ({"num_gueses": 3}, "num_gueses", "did you mean 'num_guesses'?"),
    ({"pools.ackley_pool.workres": 2}, "pools.ackley_pool.workres", "did you mean 'workers'?"),
    ({"tasks.ackley.pools": ["ackley_pol"]}, "tasks.ackley.pools", "did you mean 'ackley_pool'?"),
    ({"tasks.gpr.queue": "locl"}, "tasks.gpr.queue", "did you mean 'local'?"),
    ({"gc_endpoints": {"login": UUID}, "pools.gpr_pool.type": "globus", "pools.gpr_pool.gc_endpoint": "logn"},
     "pools.gpr_pool.gc_endpoint", "did you mean 'login'?"),
    ({"gc_endpoints": {"login": UUID}, "task_queues.g": {"type": "globus", "endpoint": "lgoin"}},
     "task_queues.g.endpoint", "did you mean 'login'?"),
    ({"task_queues.svc": {"type": "service", "url": "http://h:1", "tunel": {"host": "h", "remote_port": 1}}},
     "task_queues.svc.tunel", "did you mean 'tunnel'?"),
    ({"task_queues.svc": {"type": "service", "tunnel": {"host": "h", "remote_port": 1, "ssh_confg": "x"}}},
     "task_queues.svc.tunnel.ssh_confg", "did you mean 'ssh_config'?"),
    ({"dbs.main.tpye": "url"}, "dbs.main.tpye", "did you mean 'type'?"),
    ({"scaling": {"max_pool": 2}}, "scaling.max_pool", "did you mean 'max_pools'?"),
    ({"acquisition": "eii"}, "acquisition", "did you mean 'ei'?"),
    ({"reprioritize_endpoint": "pol"}, "reprioritize_endpoint", "did you mean 'pool'?"),
    ({"pools.gpr_pool.type": "slrum"}, "pools.gpr_pool.type", "did you mean 'slurm'?"),
    ({"proxystore.type": "redsi"}, "proxystore.type", "did you mean 'redis'?"),
]


@pytest.mark.parametrize(("changes", "key", "suggestion"), BAD, ids=[case[1] for case in BAD])
def test_mistakes_name_the_file_the_key_and_the_closest_name(tmp_path, changes, key, suggestion):
    path = write(tmp_path, variant(**changes))
    with pytest.raises(ConfigError) as exc:
        load_workflow_config(path)
    line = problem_line(exc, key)
    assert line.startswith(f"{path}: {key}: ") and line.endswith(suggestion), line


def test_every_problem_is_reported_at_once(tmp_path):
    path = write(tmp_path, variant(num_gueses=3, **{"pools.ackley_pool.workres": 2, "acquisition": "eii"}))
    with pytest.raises(ConfigFileError) as exc:
        load_workflow_config(path)
    assert exc.value.path == path
    assert sorted(p.split(":")[0] for p in exc.value.problems) == ["acquisition", "num_gueses",
                                                                   "pools.ackley_pool.workres"]
    assert all(line.startswith(f"{path}: ") for line in str(exc.value).splitlines())


def test_every_reference_problem_is_reported_at_once(tmp_path):
    path = write(tmp_path, variant(**{"task_queues.local.db": "mian", "tasks.ackley.pools": ["nope"]}))
    with pytest.raises(ConfigFileError) as exc:
        load_workflow_config(path)
    keys = {p.split(":")[0] for p in exc.value.problems}
    assert keys == {"task_queues.local.db", "tasks.ackley.pools"}
    assert "(expected one of: ackley_pool, gpr_pool)" in str(exc.value)  # nothing close: the choices


@pytest.mark.parametrize(("changes", "key", "message"), [
    ({"pools.ackley_pool.workers": 0}, "pools.ackley_pool.workers", "greater than or equal to 1"),
    ({"pools.ackley_pool.walltime": "1 hour"}, "pools.ackley_pool.walltime", "should match pattern"),
    ({"pools.ackley_pool.cmd": "run {payload}"}, "pools.ackley_pool", "give exactly one of fn or cmd"),
    ({"task_queues.svc": {"type": "service"}}, "task_queues.svc", "needs url or tunnel"),
    ({"task_queues.svc": {"type": "service", "tunnel": {"host": "h"}}}, "task_queues.svc.tunnel",
     "needs at least host and remote_port"),
    ({"task_queues.g": {"type": "globus"}}, "task_queues.g.endpoint", "a globus queue needs endpoint"),
    ({"task_queues.q": {"db": "main"}}, "task_queues.q.type", "missing; expected local, service or globus"),
    ({"pools.gpr_pool.type": "globus"}, "pools.gpr_pool.gc_endpoint", "a globus pool needs gc_endpoint"),
    ({"tasks": {"gpr": BASE["tasks"]["gpr"]}}, "tasks", "needs an 'ackley' entry"),
])
def test_invalid_values_name_the_key(tmp_path, changes, key, message):
    path = write(tmp_path, variant(**changes))
    with pytest.raises(ConfigError) as exc:
        load_workflow_config(path)
    assert message in problem_line(exc, key)


def test_database_urls_are_never_echoed(tmp_path):
    path = write(tmp_path, variant(dbs={"main": {"type": "url", "url": "mysql://root:secret@host/db"}}))
    with pytest.raises(ConfigError, match="postgresql://") as exc:
        load_workflow_config(path)
    assert "secret" not in str(exc.value) and f"{path}: dbs.main" in str(exc.value)


def test_urls_and_null_are_accepted_where_a_dbs_name_is(tmp_path):
    cfg = load_workflow_config(write(tmp_path, variant(**{
        "task_queues.other": {"type": "local", "db": "postgresql://u@h/db"},
        "task_queues.env": {"type": "local", "db": None},
        "task_queues.g": {"type": "globus", "endpoint": UUID}})))
    assert cfg.resolved_task_queue("other").db == "postgresql://u@h/db"
    assert cfg.resolved_task_queue("env").db is None


def test_unset_variables_name_the_file_and_key(tmp_path, monkeypatch):
    monkeypatch.delenv("EQFLOW_NOT_SET", raising=False)
    path = write(tmp_path, variant(**{"pools.ackley_pool.queue": "${EQFLOW_NOT_SET}"}))
    with pytest.raises(ConfigError, match=r"pools\.ackley_pool\.queue: \$\{EQFLOW_NOT_SET\} is not set") as exc:
        load_workflow_config(path)
    assert str(path) in str(exc.value)


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_shipped_example_validates(example, monkeypatch):
    monkeypatch.delenv("EQFLOW_SERVICE_TOKEN", raising=False)
    cfg = load_workflow_config(example)
    assert ("ackley" in cfg.tasks or {"sample", "evaluate"} <= set(cfg.tasks)) and cfg.task_queues


def test_examples_were_found():
    assert {p.name for p in EXAMPLES} >= {"local.yaml", "local_full.yaml", "cluster_example.yaml"}


def _eqflow_commands(command: str) -> list[list[str]]:
    words = shlex.split(command)
    if words and words[0] == "ssh":  # ssh HOST 'remote command'
        return _eqflow_commands(words[-1])
    return [words] if words and Path(words[0]).name == "eqflow" else []


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_call_only_what_eqflow_ships(example):
    from eqflow.cli import build_parser

    cfg = load_workflow_config(example)
    for name, db in cfg.dbs.items():
        for command in filter(None, (db.start, db.stop)):
            assert ".sh" not in command, f"{example.name}: dbs.{name} calls a script eqflow does not ship"
            commands = _eqflow_commands(command)
            assert commands, f"{example.name}: dbs.{name}: {command!r} is not an eqflow command"
            for words in commands:
                build_parser().parse_args(words[1:])  # exits (fails the test) on an unknown command


def test_cluster_example_starts_and_stops_its_database_with_eqflow():
    db = load_workflow_config(ROOT / "cfgs" / "cluster_example.yaml").dbs["main"]
    assert db.start is not None and db.stop is not None
    assert _eqflow_commands(db.start)[0][1:3] == ["db", "start"]
    assert _eqflow_commands(db.stop)[0][1:3] == ["db", "stop"]


def test_docs_config_md_is_up_to_date():
    page = ROOT / "docs" / "config.md"
    assert page.exists() and page.read_text() == render(), \
        "docs/config.md is out of date with eqflow/config.py: run `eqflow config docs > docs/config.md`"


def test_every_key_is_described_and_in_the_reference():
    page = render()
    models = [section.model for section in sections()]
    assert {m.__name__ for m in models} >= {"WorkflowConfig", "DbConfig", "PoolConfig", "TaskConfig",
                                            "LocalQueueConfig", "ServiceQueueConfig", "GlobusQueueConfig",
                                            "TunnelConfig", "ProxyStoreConfig", "ScalingConfigModel"}
    for model in models:
        assert model.__doc__, model.__name__
        assert f'<a id="{model.__name__.lower()}"></a>' in page
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            assert f"| `{name}` | " in page


def test_task_queue_entries_are_typed_and_their_dict_form_still_works():
    cfg = load_workflow_config(ROOT / "cfgs" / "cluster_example.yaml")
    remote = cfg.task_queues["remote"]
    assert isinstance(remote, ServiceQueueConfig) and remote.tunnel is not None
    assert parse_task_queue("remote", dict(remote)) == remote  # dict(model), as run.py did
    assert parse_task_queue("remote", remote.model_dump()) == remote
    local = load_workflow_config(ROOT / "cfgs" / "local.yaml").task_queues["local"]
    assert isinstance(local, LocalQueueConfig) and local.db == "main"
    assert parse_task_queue("q", {"type": "local"}).db is None  # dict form: no db is $EQFLOW_DB_URL/embedded


def test_make_task_queue_dict_errors_name_the_key_and_suggest():
    for entry, message in [({"type": "lokal"}, "task_queues.q.type: expected local, service or globus, got 'lokal'; "
                                               "did you mean 'local'?"),
                           ({"type": "local", "dbs": 1}, "task_queues.q.dbs: unknown key; did you mean 'db'?"),
                           ({"type": "globus"}, "task_queues.q.endpoint: a globus queue needs endpoint")]:
        with pytest.raises(ConfigError) as exc:
            make_task_queue("q", entry)
        assert str(exc.value) == message


def test_open_task_queue_resolves_dbs_and_gc_endpoints_names(tmp_path):
    from eqflow.gc_queue import GCTaskQueue

    url = "postgresql://u@db.example.org/eqflow"
    cfg = load_workflow_config(write(tmp_path, variant(
        dbs={"main": {"type": "embedded"}, "remote": {"type": "url", "url": url}},
        gc_endpoints={"login": UUID},
        **{"task_queues.g": {"type": "globus", "endpoint": "login", "db": "remote"}})))
    resolved = cfg.resolved_task_queue("g")
    assert isinstance(resolved, GlobusQueueConfig) and (resolved.endpoint, resolved.db) == (UUID, url)
    assert cfg.resolved_task_queue("local").db is None  # embedded
    with ThreadPoolExecutor(1) as executor:
        queue = open_task_queue(cfg, "g", executor=executor)
        assert isinstance(queue, GCTaskQueue) and queue.db_url == url
    with pytest.raises(ConfigError, match="no task_queues entry named 'lcoal'; did you mean 'local'"):
        cfg.resolved_task_queue("lcoal")


def eqflow_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "eqflow.cli", "config", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_cli_config_check(tmp_path):
    good = eqflow_cli("check", "cfgs/local.yaml", "cfgs/cluster_example.yaml")
    assert good.returncode == 0, good.stderr
    assert good.stdout.splitlines()[0].startswith("cfgs/local.yaml: OK")
    bad_path = write(tmp_path, variant(**{"task_queues.spare": {"type": "lokal"}}), "bad.yaml")
    bad = eqflow_cli("check", "cfgs/local.yaml", str(bad_path))
    assert bad.returncode == 2
    assert f"{bad_path}: task_queues.spare.type: expected local, service or globus, got 'lokal'; " \
           "did you mean 'local'?" in bad.stderr
    missing = eqflow_cli("check", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "no such config file" in missing.stderr
    assert eqflow_cli("check").returncode == 2


def test_cli_config_schema_and_docs():
    out = eqflow_cli("schema")
    assert out.returncode == 0, out.stderr
    schema = json.loads(out.stdout)
    assert {"LocalQueueConfig", "ServiceQueueConfig", "GlobusQueueConfig", "TunnelConfig"} <= set(schema["$defs"])
    assert schema["properties"]["task_queues"]["additionalProperties"]["discriminator"]["propertyName"] == "type"
    assert schema["required"] == ["pools", "tasks"]
    assert all(prop.get("description") for prop in schema["properties"].values())
    docs = eqflow_cli("docs")
    assert docs.returncode == 0 and docs.stdout == render()
