"""Parameters and replies built for speed: IntArray (eqflow.db.arrays), text arrays in binary and
the service's task dicts."""

from __future__ import annotations

import psycopg
import pytest

from eqflow.db.arrays import IntArray


def test_int_arrays_reach_the_server_as_sent(db_url: str) -> None:
    big = [2**62, -(2**62), 0, 7, -1]
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert conn.execute("SELECT %s::bigint[]", (IntArray(big),)).fetchone() == (big,)
        assert conn.execute("SELECT %s::integer[]", (IntArray([2**31 - 1, -(2**31)]),)).fetchone() == \
            ([2**31 - 1, -(2**31)],)
        assert conn.execute("SELECT cardinality(%s::bigint[])", (IntArray([]),)).fetchone() == (0,)
        ids = IntArray(range(10_000))
        assert conn.execute("SELECT sum(x) FROM unnest(%s::bigint[]) x", (ids,)).fetchone() == (sum(ids),)


def test_an_int_array_sends_none_as_null(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert conn.execute("SELECT %s::bigint[]", (IntArray([None, 5, None]),)).fetchone() == ([None, 5, None],)


def test_payloads_results_and_errors_arrive_as_sent(queue) -> None:  # type: ignore[no-untyped-def]
    """Text arrays go in binary (%(name)b in sql/queries.sql): quotes, backslashes, braces, commas,
    newlines, NULL-looking text and non-ASCII arrive untouched, and None tags stay NULL."""
    awkward = ['"', "\\", "{}", "a,b", "line\nbreak", "NULL", "", "é ✓ 😀", " padded "]
    futures = queue.submit_many("arrays", 71, awkward, tag=[None, "t", *awkward[2:]])
    assert [f.tag for f in futures] == [None, "t", *awkward[2:]]
    claimed = sorted(queue.claim(71, n=len(awkward)), key=lambda t: t.task_id)
    assert [t.payload for t in claimed] == awkward
    assert [t.tag for t in claimed] == [None, "t", *awkward[2:]]
    queue.report([(t, t.payload[::-1]) for t in claimed[:5]])
    queue.report_failure([(t, "err:" + t.payload) for t in claimed[5:]], retry=False)
    assert [f.result(timeout=10) for f in futures[:5]] == [p[::-1] for p in awkward[:5]]
    assert [f.exception() for f in futures[5:]] == ["err:" + p for p in awkward[5:]]


def test_an_int_array_holds_integers_only(db_url: str) -> None:
    """Anything else fails in the client, before it could change the literal's shape."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        with pytest.raises((ValueError, psycopg.DataError)):
            conn.execute("SELECT %s::bigint[]", (IntArray(["1},{2"]),))  # type: ignore[list-item]
        assert conn.execute("SELECT %s::bigint[]", (IntArray([True, 3]),)).fetchone() == ([1, 3],)


def test_a_claimed_task_goes_out_with_every_field() -> None:
    """The service's task dicts (eqflow.remote._task_dict) are dataclasses.asdict's, field for field."""
    import dataclasses

    from eqflow.models import ClaimedTask
    from eqflow.remote import _task_dict

    task = ClaimedTask(1, "exp|x", 2, -3, '{"a": [1]}', None, 4, 5, "pool-1")
    assert _task_dict(task) == dataclasses.asdict(task)
    assert list(_task_dict(task)) == [f.name for f in dataclasses.fields(ClaimedTask)]
