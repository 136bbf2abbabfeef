"""Loads the SQL that lives in ``sql/``: numbered migrations and the named query blocks."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from importlib.abc import Traversable

_NAME_LINE = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
_MIGRATION_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")


def _sql_root() -> Traversable:
    return resources.files("eqflow.sql")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


@cache
def migrations() -> tuple[Migration, ...]:
    """All migrations, ordered by version."""
    found = []
    for entry in (_sql_root() / "migrations").iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text()))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations must be numbered 0001, 0002, ... without gaps: {versions}")
    return tuple(found)


@cache
def queries() -> dict[str, str]:
    """The named statements of every ``sql/*.sql`` file (queries.sql for the core, one file per
    workflow package); a name defined twice is an error."""
    named: dict[str, str] = {}
    where: dict[str, str] = {}
    files = sorted((e for e in _sql_root().iterdir() if e.name.endswith(".sql")), key=lambda e: e.name)
    for entry in files:
        parts = _NAME_LINE.split(entry.read_text())
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            if name in named:
                raise RuntimeError(f"query {name!r} is defined in both sql/{where[name]} and sql/{entry.name}")
            lines = [ln for ln in body.strip().splitlines() if not ln.lstrip().startswith("--")]
            named[name] = "\n".join(lines).strip().rstrip(";")
            where[name] = entry.name
    return named


def query(name: str) -> str:
    try:
        return queries()[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in sql/*.sql") from None
