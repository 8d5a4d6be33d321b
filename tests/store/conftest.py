"""Fixtures of the shared store suite: every test taking `backend` runs once per engine."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from billing.store.base import Store
from tests.store.backends import ENGINES, Backend, PostgresBackend, make_backend
from tests.store.factories import opened


@pytest.fixture(params=ENGINES)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    made = make_backend(request.param, tmp_path)
    yield made
    await made.dispose()


@pytest.fixture
async def location(backend: Backend) -> str:
    """A fresh location: its own SQLite file or its own PostgreSQL database."""
    return await backend.location()


@pytest.fixture
async def store(backend: Backend, location: str) -> AsyncIterator[Store]:
    s = await opened(backend, location)
    yield s
    await s.close()


@pytest.fixture
async def pg() -> AsyncIterator[PostgresBackend]:
    """The PostgreSQL engine alone, for what only it promises."""
    backend = PostgresBackend()
    yield backend
    await backend.dispose()


@pytest.fixture
async def url(pg: PostgresBackend) -> str:
    """A fresh PostgreSQL database."""
    return await pg.location()
