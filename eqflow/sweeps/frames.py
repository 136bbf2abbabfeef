"""Sweep data as pandas DataFrames, read through SQLAlchemy on the same database.

The statements are the named blocks of ``sql/sweeps.sql`` with psycopg's ``%(name)s``
parameters; pandas runs a plain-string query with the engine's ``exec_driver_sql``, which hands
it to psycopg as it is, so one text serves both doors.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import psycopg
from sqlalchemy import Engine, create_engine
from sqlalchemy.pool import NullPool

from eqflow.db.connector import connect_kwargs
from eqflow.db.sqlfiles import query


def engine_for(url: str) -> Engine:
    """A SQLAlchemy engine on an eqflow database URL (a URL or a libpq key=value string)."""
    return create_engine("postgresql+psycopg://", poolclass=NullPool,
                         creator=lambda: psycopg.connect(url, **connect_kwargs(url)))


def read_frame(engine: Engine, name: str, params: dict[str, Any]) -> pd.DataFrame:
    with engine.connect() as conn:
        return pd.read_sql(query(name), conn, params=params)
