"""A fresh PostgreSQL database per test, on the machine's server (127.0.0.1:5432, trust auth).

    with fresh_database("ledger") as url:      # postgresql+psycopg://postgres@.../ledger_<hex>
        ...                                    # dropped afterwards, even if connections remain

Or as a fixture in a test module::

    @pytest.fixture
    def pg_url() -> Iterator[str]:
        with fresh_database("mything") as url:
            yield url

``SENKEN_TEST_PG_HOST`` / ``_PORT`` / ``_USER`` / ``_DB`` point elsewhere (the admin database
is the one ``CREATE DATABASE`` runs in).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

__all__ = ["admin_dsn", "fresh_database"]

HOST = os.environ.get("SENKEN_TEST_PG_HOST", "127.0.0.1")
PORT = int(os.environ.get("SENKEN_TEST_PG_PORT", "5432"))
USER = os.environ.get("SENKEN_TEST_PG_USER", "postgres")
ADMIN_DB = os.environ.get("SENKEN_TEST_PG_DB", "test")


def admin_dsn() -> str:
    return f"host={HOST} port={PORT} user={USER} dbname={ADMIN_DB} connect_timeout=5"


@contextmanager
def fresh_database(prefix: str = "test") -> Iterator[str]:
    """Create an empty database ``<prefix>_<random hex>``; yield its SQLAlchemy URL; drop it.

    Fails with what to do when the server is not there."""
    name = f"{prefix}_{uuid.uuid4().hex[:16]}"
    try:
        with psycopg.connect(admin_dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        raise AssertionError(f"PostgreSQL at {HOST}:{PORT} is needed (user {USER}, trust auth, "
                             f"database {ADMIN_DB}): {exc}") from None
    try:
        yield f"postgresql+psycopg://{USER}@{HOST}:{PORT}/{name}"
    finally:
        with psycopg.connect(admin_dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
