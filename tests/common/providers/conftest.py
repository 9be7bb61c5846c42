"""Fixtures for the chat adapters: each vendor's fake upstream over real HTTP on 127.0.0.1.

One server per vendor lives for the module; every test gets it with fresh knobs and counters.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from common.providers.http import build_http_client


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with build_http_client(connect_timeout=2.0, read_timeout=5.0) as http_client:
        yield http_client
