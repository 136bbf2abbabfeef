"""`eqflow funsearch run`: bad input is refused with a clear message and exit code 2, before any
database is touched."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "eqflow.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO),
                                            "EQFLOW_HOME": str(cwd / "no-db-here")})


@pytest.mark.parametrize(("args", "message"), [
    (["--cfg", "cfgs/local.yaml"], "no funsearch: section"),
    (["--cfg", "nope.yaml"], "no such config file"),
    (["--example", "funsearch_local", "--spec-path", "nope.py"], "not a bundled spec (deletion_codes, cap_set)"),
    (["--example", "funsearch_local", "--max-samplers", "-1"], "--max-samplers: Input should be greater than"),
    (["--example", "nope"], "no example config 'nope'"),
])
def test_bad_input_is_refused_before_the_database(args: list[str], message: str, tmp_path: Path) -> None:
    (tmp_path / "cfgs").mkdir()
    (tmp_path / "cfgs" / "local.yaml").write_text((REPO / "cfgs" / "local.yaml").read_text())
    done = run("funsearch", "run", "x", *args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "no-db-here").exists()


def test_the_ackley_entry_point_sends_a_funsearch_config_to_funsearch_run(tmp_path: Path) -> None:
    done = run("run", "x", "--example", "funsearch_local", cwd=tmp_path)
    assert done.returncode == 2
    assert "eqflow funsearch run x --cfg" in done.stderr
