"""Fixtures of the graph service's tests that need PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from rca_common import db
from rca_common.settings import Settings


@pytest.fixture
async def conn() -> AsyncIterator[asyncpg.Connection]:
    """A connection to a fresh, migrated schema of its own, dropped afterwards."""
    dsn = Settings().database_url
    schema = f"gs_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(dsn)
    try:
        await db.migrate(admin, schema)
        c = await db.connect(dsn, schema)
        try:
            yield c
        finally:
            await c.close()
    finally:
        await db.drop_schema(admin, schema)
        await admin.close()
