"""Fixtures for the chat adapters: each vendor's fake upstream over real HTTP on 127.0.0.1.

One server per vendor lives for the module; every test gets it with fresh knobs and counters.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from common.providers.http import build_http_client
from tests.fakes import FakeUpstream, anthropic_upstream, gemini_upstream, openai_upstream


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def _openai_server() -> Iterator[FakeUpstream]:
    with openai_upstream.run() as fake:
        yield fake


@pytest.fixture(scope="module")
def _anthropic_server() -> Iterator[FakeUpstream]:
    with anthropic_upstream.run() as fake:
        yield fake


@pytest.fixture(scope="module")
def _gemini_server() -> Iterator[FakeUpstream]:
    with gemini_upstream.run() as fake:
        yield fake


@pytest.fixture
def openai_fake(_openai_server: FakeUpstream) -> FakeUpstream:
    _openai_server.reset()
    return _openai_server


@pytest.fixture
def anthropic_fake(_anthropic_server: FakeUpstream) -> FakeUpstream:
    _anthropic_server.reset()
    return _anthropic_server


@pytest.fixture
def gemini_fake(_gemini_server: FakeUpstream) -> FakeUpstream:
    _gemini_server.reset()
    return _gemini_server


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with build_http_client(connect_timeout=2.0, read_timeout=5.0) as http_client:
        yield http_client
