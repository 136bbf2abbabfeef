"""Integer arrays sent as one array literal.

psycopg dumps a Python list element by element in Python (about 0.8 us per element here): a
look-up of 10,000 task ids spent 8 ms building its parameter, against 2 ms for the same
round trip with the array written as one string. ``IntArray`` is a list that psycopg sends as
that string; the statements cast it (``%(task_ids)s::bigint[]``), as they do a list.

Text arrays take the other road: the statements ask for them in binary (``%(payloads)b``),
which psycopg dumps in C. In text format every element is quoted and escaped in Python:
140 ms for 20,000 payloads, against 7 ms in binary.
"""

from __future__ import annotations

import psycopg
from psycopg.adapt import Dumper


class IntArray(list[int | None]):
    """Integers (or None, sent as NULL) for an int4[] or int8[] parameter (the statement's cast
    decides which)."""


class _IntArrayDumper(Dumper):
    oid = 0  # sent untyped: the statement's cast (int4[] or int8[]) types it

    def dump(self, obj: IntArray) -> bytes:
        # int() keeps the literal to digits and signs whatever the list was given
        if None in obj:
            return ("{" + ",".join("NULL" if v is None else str(int(v)) for v in obj) + "}").encode()
        return ("{" + ",".join(map(str, map(int, obj))) + "}").encode()  # type: ignore[arg-type]


psycopg.adapters.register_dumper(IntArray, _IntArrayDumper)
