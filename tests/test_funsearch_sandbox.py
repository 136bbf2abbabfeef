"""The FunSearch sandbox with real processes: limits, isolation, recovery, honest scores."""

from __future__ import annotations

import os
import select
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from eqflow.funsearch.sandbox import Evaluation, Limits, Sandbox, isolation_available, isolations
from eqflow.funsearch.spec import Spec, SpecError, test_key

REPO = Path(__file__).resolve().parent.parent
TESTS = [{"n": n, "s": 1} for n in (6, 7, 8)]
LIMITS = Limits(timeout_s=1.5, memory_mb=256, max_procs=8)
GOOD = "    return 0.0"
VT = "    return 1.0 if sum((i + 1) * x for i, x in enumerate(el)) % (n + 1) == 0 else 0.0"


@pytest.fixture(scope="module")
def spec() -> Spec:
    return Spec.load("deletion_codes")


@pytest.fixture
def sandbox(spec: Spec) -> Iterator[Sandbox]:
    with Sandbox(spec, TESTS, LIMITS) as box:
        yield box


def assert_still_good(box: Sandbox) -> None:
    result = box.evaluate(GOOD)
    assert result.status == "ok", result.error
    assert list(result.scores.values()) == [8.0, 14.0, 25.0]


def leftover_processes(box: Sandbox) -> list[psutil.Process]:
    """Processes of the sandbox uid (or, without one, descendants of the server other than itself)."""
    if box.uid is not None:
        return [p for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real == box.uid]
    assert box.server_pid is not None
    tree = psutil.Process(box.server_pid).children(recursive=True)
    return [p for p in tree if p.pid != box.server_pid and "_sandbox_server" not in " ".join(p.cmdline())]


def test_good_candidates_score_and_hash(sandbox: Sandbox) -> None:
    print(isolation_available())
    lexicographic = sandbox.evaluate(GOOD)
    assert lexicographic.status == "ok", lexicographic.error
    assert lexicographic.scores == {test_key(t): size for t, size in zip(TESTS, [8.0, 14.0, 25.0], strict=True)}
    assert lexicographic.behaviour_hash and len(lexicographic.behaviour_hash) == 64
    assert lexicographic.error is None and lexicographic.wall_s < 1.0
    vt = sandbox.evaluate(VT)
    assert vt.status == "ok" and list(vt.scores.values()) == [10.0, 16.0, 30.0]
    # Same return values (0 and 0.0, noise below 9 digits), same behaviour; other values, another.
    assert sandbox.evaluate("    return 0").behaviour_hash == lexicographic.behaviour_hash
    assert sandbox.evaluate("    return 1e-12 * 0.3").behaviour_hash != lexicographic.behaviour_hash
    assert vt.behaviour_hash != lexicographic.behaviour_hash
    assert Evaluation.from_json(vt.to_json()) == vt


def test_garbage_and_failing_bodies_are_errors(sandbox: Sandbox) -> None:
    syntax = sandbox.evaluate("    return 0.0 +\n")
    assert syntax.status == "error" and "SyntaxError" in (syntax.error or "")
    assert sandbox.evaluate("  ]]] not python at all").status == "error"
    assert sandbox.evaluate("").status == "error"
    raised = sandbox.evaluate("    raise KeyError('boom')")
    assert raised.status == "error" and "KeyError: 'boom'" in (raised.error or "")
    assert sandbox.evaluate("    raise SystemExit(0)").status == "error"
    assert sandbox.evaluate("    import os\n    os._exit(3)").status == "error"
    assert sandbox.evaluate("    return float('nan')").status == "error"
    assert sandbox.evaluate("    return 'high'").status == "error"
    # Printing does not disturb the server's protocol.
    assert sandbox.evaluate("    print('x' * 100000)\n    return 0.0").status == "ok"
    assert_still_good(sandbox)


def test_checker_runs_outside_the_candidate(sandbox: Sandbox) -> None:
    # The candidate swaps the greedy for a fake code and the checker for one that approves anything;
    # the server scores with its own untouched copy of score(), so the fake code is caught.
    tamper = (
        "    g = globals()\n"
        "    g['solve'] = lambda n, s: [(0,) * n, (0,) * (n - 1) + (1,)] * 5\n"
        "    g['score'] = lambda solution, **test: 1e9\n"
        "    return 0.0"
    )
    result = sandbox.evaluate(tamper)
    assert result.status == "invalid", result
    assert result.scores == {} and "ValueError" in (result.error or "")
    assert_still_good(sandbox)


def test_infinite_loop_times_out(sandbox: Sandbox) -> None:
    started = time.monotonic()
    result = sandbox.evaluate("    while True:\n        pass")
    assert result.status == "timeout"
    assert time.monotonic() - started < LIMITS.timeout_s + 2
    assert_still_good(sandbox)


def test_huge_allocation_is_a_memory_error(sandbox: Sandbox) -> None:
    result = sandbox.evaluate("    block = bytearray(10 * 1024**3)\n    return 0.0")
    assert result.status == "memory", result.error
    assert_still_good(sandbox)


def test_fork_bomb_is_contained(sandbox: Sandbox) -> None:
    started = time.monotonic()
    result = sandbox.evaluate("    import os\n    while True:\n        os.fork()")
    assert result.status in ("error", "timeout")
    assert time.monotonic() - started < LIMITS.timeout_s + 5
    assert psutil.Process().is_running()
    assert leftover_processes(sandbox) == []
    # A candidate that leaves a sleeping child behind is cleaned up too.
    body = (
        "    import os, time\n"
        "    if not globals().get('forked'):\n"
        "        globals()['forked'] = True\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(600)\n"
        "    return 0.0"
    )
    result = sandbox.evaluate(body)
    assert result.status == "ok", result.error
    assert leftover_processes(sandbox) == []
    assert_still_good(sandbox)


def test_no_network(sandbox: Sandbox) -> None:
    if not sandbox.isolation_info.no_network:
        pytest.skip(f"no network isolation here ({sandbox.isolation})")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        body = (f"    import socket\n    socket.create_connection(('127.0.0.1', {port}), timeout=0.5)\n"
                "    return 0.0")
        result = sandbox.evaluate(body)
        assert result.status == "error"
        assert "Error" in (result.error or "")
        assert not select.select([server], [], [], 0)[0], "the candidate reached the host's listener"
    assert_still_good(sandbox)


def test_filesystem_is_read_only_outside_the_workdir(sandbox: Sandbox) -> None:
    if not sandbox.isolation_info.readonly_filesystem:
        pytest.skip(f"no filesystem isolation here ({sandbox.isolation})")
    name = f"eqflow-sandbox-probe-{uuid.uuid4().hex}"
    in_repo = REPO / name
    in_tmp = Path("/tmp") / name
    repo_write = sandbox.evaluate(f"    open({str(in_repo)!r}, 'w').write('x')\n    return 0.0")
    # Read-only where the host filesystem shows through; a checkout under /tmp (CI clones there)
    # is hidden behind the private /tmp instead, where the sandbox's uid may not write.
    refused = ("Read-only file system", "Permission denied", "No such file or directory")
    assert repo_write.status == "error" and any(r in (repo_write.error or "") for r in refused), repo_write.error
    assert not in_repo.exists()
    # /tmp inside is private: the write may succeed there, but never lands in the host's /tmp.
    sandbox.evaluate(f"    open({str(in_tmp)!r}, 'w').write('x')\n    return 0.0")
    assert not in_tmp.exists()
    # Service sockets in /run and the home directories are hidden.
    secret = Path.home() / f".{name}"
    secret.write_text("credentials")
    try:
        hidden = sandbox.evaluate("    import os\n    assert not os.listdir('/run'), os.listdir('/run')\n"
                                  f"    assert {secret.name!r} not in os.listdir({str(secret.parent)!r})\n"
                                  "    return 0.0")
    finally:
        secret.unlink()
    assert hidden.status == "ok", hidden.error
    # The working directory is writable (and removed afterwards).
    assert sandbox.evaluate("    open('scratch.txt', 'w').write('x')\n    return 0.0").status == "ok"
    big = sandbox.evaluate(f"    open('big', 'wb').write(b'x' * {(LIMITS.max_file_mb + 1) << 20})\n    return 0.0")
    assert big.status == "error" and "File too large" in (big.error or "")
    assert_still_good(sandbox)


def test_environment_is_empty(spec: Spec, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EQFLOW_TEST_SECRET", "hunter2")
    with Sandbox(spec, TESTS[:1], LIMITS) as box:
        body = (
            "    import os\n"
            "    leaked = dict(os.environ)\n"
            "    try:\n"
            "        raw = open('/proc/self/environ', 'rb').read()\n"
            "    except OSError:\n"
            "        raw = b''\n"
            "    if leaked or b'hunter2' in raw or b'PATH=' in raw or b'HOME=' in raw:\n"
            "        raise RuntimeError(f'environment leaked: {leaked} {raw!r}')\n"
            "    return 0.0"
        )
        result = box.evaluate(body)
        assert result.status == "ok", result.error


def test_server_killed_between_evaluations(sandbox: Sandbox) -> None:
    assert sandbox.server_pid is not None
    outer = psutil.Process(sandbox.server_pid)
    for process in [*outer.children(recursive=True), outer]:
        process.send_signal(signal.SIGKILL)
    outer.wait(timeout=10)
    assert_still_good(sandbox)


def test_server_killed_during_an_evaluation(sandbox: Sandbox) -> None:
    assert sandbox.server_pid is not None
    outer = psutil.Process(sandbox.server_pid)
    killer = threading.Timer(0.3, lambda: outer.send_signal(signal.SIGKILL))
    killer.start()
    try:
        result = sandbox.evaluate("    import time\n    time.sleep(1.0)\n    return 0.0")
    finally:
        killer.join()
    assert result.status == "error" and "sandbox server" in (result.error or "")
    assert_still_good(sandbox)


def test_spec_without_checker_and_broken_prepare(tmp_path: Path) -> None:
    classic = Spec.from_text(
        "import funsearch\n\n@funsearch.run\ndef evaluate(n):\n    return sum(priority(i) for i in range(n))\n\n"
        "@funsearch.evolve\ndef priority(i):\n    return 0.0\n", "classic")
    with Sandbox(classic, [{"n": 4}], LIMITS) as box:
        result = box.evaluate("    return i * 1.5")
        assert result.status == "ok" and result.scores == {'{"n":4}': 9.0}
    broken = Spec.from_text(
        "import funsearch\n\ndef prepare(n):\n    raise RuntimeError('no tables')\n\n@funsearch.run\n"
        "def evaluate(n):\n    return priority(n)\n\n@funsearch.evolve\ndef priority(n):\n    return 0.0\n", "broken")
    with pytest.raises(SpecError, match="no tables"):
        Sandbox(broken, [{"n": 1}], LIMITS)


def test_n12_two_deletions_is_fast(spec: Spec) -> None:
    with Sandbox(spec, [{"n": 12, "s": 2}], LIMITS) as box:
        result = box.evaluate(GOOD)
        assert result.status == "ok" and result.scores == {'{"n":12,"s":2}': 29.0}
        assert result.wall_s < 1.0


def test_close_leaves_nothing_running(spec: Spec) -> None:
    box = Sandbox(spec, TESTS[:1], LIMITS)
    pid = box.server_pid
    assert pid is not None
    box.close()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    with pytest.raises(RuntimeError, match="closed"):
        box.evaluate(GOOD)
    assert os.environ.get("EQFLOW_TEST_SECRET") is None


WEAKER = [choice.kind for choice in isolations()[1:]]


@pytest.mark.parametrize("kind", WEAKER or [pytest.param("none", marks=pytest.mark.skip("only one isolation here"))])
def test_weaker_isolations_still_contain_candidates(spec: Spec, kind: str) -> None:
    """The fallbacks (unshare, rlimits only) run the same limits and clean-up as bubblewrap."""
    with Sandbox(spec, TESTS, LIMITS, isolation=kind) as box:
        assert box.isolation_info.kind == kind and box.isolation.startswith(("unshare", "no namespaces"))
        assert_still_good(box)
        started = time.monotonic()
        assert box.evaluate("    while True:\n        pass").status == "timeout"
        assert time.monotonic() - started < LIMITS.timeout_s + 2
        assert box.evaluate("    block = bytearray(10 * 1024**3)\n    return 0.0").status == "memory"
        assert box.evaluate("    import os\n    while True:\n        os.fork()").status in ("error", "timeout")
        assert leftover_processes(box) == []
        assert box.evaluate("    import os\n    assert not os.environ, os.environ\n    return 0.0").status == "ok"
        if box.uid is not None:  # the candidate cannot write where the evaluator's user can
            assert box.evaluate(f"    open({str(REPO / 'sandbox-probe')!r}, 'w')\n    return 0.0").status == "error"
            assert not (REPO / "sandbox-probe").exists()
        assert box.server_pid is not None
        outer = psutil.Process(box.server_pid)
        for process in [*outer.children(recursive=True), outer]:
            process.send_signal(signal.SIGKILL)
        outer.wait(timeout=10)
        assert_still_good(box)


def test_sandbox_made_in_a_short_lived_thread_keeps_its_server(spec: Spec) -> None:
    made: list[Sandbox] = []
    maker = threading.Thread(target=lambda: made.append(Sandbox(spec, TESTS, LIMITS)))
    maker.start()
    maker.join()
    box = made[0]
    try:
        pid = box.server_pid
        time.sleep(0.3)  # a server tied to the finished thread would be dead by now
        assert_still_good(box)
        assert box.server_pid == pid
    finally:
        box.close()


def test_numpy_candidates_run() -> None:
    cap = Spec.load("cap_set")
    with Sandbox(cap, [{"n": 4}], LIMITS) as box:
        body = ("    import numpy as np\n"
                "    a = np.random.default_rng(sum(el)).random((40, 40))\n"
                "    return float(np.linalg.eigvalsh(a @ a.T)[-1] % 1)")
        result = box.evaluate(body)
        assert result.status == "ok", result.error
        assert 0 < result.scores['{"n":4}'] <= 20  # a cap set of F_3^4, whatever order numpy gave
