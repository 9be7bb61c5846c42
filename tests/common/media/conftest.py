"""Fixtures for the media adapters: the fake Google upstreams served over real HTTP on 127.0.0.1.

The servers live for the whole session; each test gets its fake with the knobs reset.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx
import pytest

from common.providers.http import build_http_client
from tests.fakes.gemini_image_upstream import FakeGeminiImageUpstream
from tests.fakes.server import serve
from tests.fakes.veo_upstream import FakeVeoUpstream

API_KEY = "test-google-key"


@dataclass
class Served:
    url: str  # the server's origin, e.g. http://127.0.0.1:4711
    base_url: str  # what the adapter is given: {url}/v1beta


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def _gemini_image_server() -> Iterator[tuple[FakeGeminiImageUpstream, Served]]:
    fake = FakeGeminiImageUpstream()
    with serve(fake.app) as url:
        yield fake, Served(url, f"{url}/v1beta")


@pytest.fixture(scope="session")
def _veo_servers() -> Iterator[tuple[FakeVeoUpstream, Served, FakeVeoUpstream, Served]]:
    """The Veo fake, and a second one on another origin for downloads that leave the first."""
    fake = FakeVeoUpstream()
    other = FakeVeoUpstream(video=fake.video)
    with serve(fake.app) as url, serve(other.app) as other_url:
        yield fake, Served(url, f"{url}/v1beta"), other, Served(other_url, f"{other_url}/v1beta")


@pytest.fixture
def gemini_image_fake(_gemini_image_server: tuple[FakeGeminiImageUpstream, Served]) -> FakeGeminiImageUpstream:
    fake, _ = _gemini_image_server
    fake.reset()
    return fake


@pytest.fixture
def gemini_image_served(_gemini_image_server: tuple[FakeGeminiImageUpstream, Served]) -> Served:
    return _gemini_image_server[1]


@pytest.fixture
def veo_fake(_veo_servers: tuple[FakeVeoUpstream, Served, FakeVeoUpstream, Served]) -> FakeVeoUpstream:
    _veo_servers[0].reset()
    return _veo_servers[0]


@pytest.fixture
def veo_served(_veo_servers: tuple[FakeVeoUpstream, Served, FakeVeoUpstream, Served]) -> Served:
    return _veo_servers[1]


@pytest.fixture
def other_veo_fake(_veo_servers: tuple[FakeVeoUpstream, Served, FakeVeoUpstream, Served]) -> FakeVeoUpstream:
    _veo_servers[2].reset()
    return _veo_servers[2]


@pytest.fixture
def other_veo_served(_veo_servers: tuple[FakeVeoUpstream, Served, FakeVeoUpstream, Served]) -> Served:
    return _veo_servers[3]


@pytest.fixture
async def http_client() -> AsyncIterator[httpx.AsyncClient]:
    """The workers' own client (aiohttp underneath), not a plain httpx one: the two report the
    same failure differently (a refused connection is a ConnectTimeout through aiohttp)."""
    async with build_http_client(connect_timeout=5.0, read_timeout=5.0) as client:
        yield client
