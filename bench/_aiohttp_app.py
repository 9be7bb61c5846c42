"""PROTOTYPE, for measurement only: the gateway with its one upstream httpx.AsyncClient running on
an aiohttp transport (PyPI `httpx-aiohttp`), everything else unchanged:

    .venv/bin/pip install --target /tmp/bench-pkgs aiohttp httpx-aiohttp   # not a Helyx dependency
    .venv/bin/python -m bench.chat --workers 1 --app bench._aiohttp_app:app --extra-path /tmp/bench-pkgs

The adapters keep speaking httpx (requests, streams, errors); only the connection pool and the
HTTP/1.1 machinery underneath are aiohttp's. See bench/upstream_client.py for why.
"""

from __future__ import annotations

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

import api.app as _app_module


def build_http_client(connect_timeout: float, read_timeout: float, max_connections: int = 200) -> httpx.AsyncClient:
    timeout = httpx.Timeout(connect=connect_timeout, read=read_timeout, write=read_timeout, pool=read_timeout)

    def session() -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=max_connections, keepalive_timeout=30))

    return httpx.AsyncClient(transport=AiohttpTransport(client=session), timeout=timeout, trust_env=False,
                             follow_redirects=False, headers={"user-agent": "helyx-gateway"})


_app_module.build_http_client = build_http_client  # type: ignore[assignment] - read by the lifespan

from api.main import app  # noqa: E402,F401 - after the patch
