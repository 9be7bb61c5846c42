"""httpx-aiohttp's transport, plus a direct POST for the chat adapters' JSON requests.

Through the transport, a request is built as an httpx.Request, turned into aiohttp's call, and
its answer wrapped back into an httpx.Response whose body is read through httpx's stream layers.
`post` skips the first and the last of those steps: it calls the same aiohttp session with the
same arguments the transport would pass (timeouts, no redirects, no decompression by aiohttp),
reads the body, and gives back a plain, already read httpx.Response (httpx then decodes any
content-encoding exactly as before). Against the fake upstream at c=1 this took a chat call from
~430 to ~300 us of wall time (bench/upstream_client.py). Failures are aiohttp's exceptions mapped
to httpx's by the transport's own table, so `upstream_errors` reads them as before.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import map_aiohttp_exceptions


class DirectAiohttpTransport(AiohttpTransport):
    def session(self) -> aiohttp.ClientSession:
        """The one aiohttp session, made on first use (inside the first request's event loop)."""
        if not isinstance(self.client, aiohttp.ClientSession):
            self.client = self.get_client()
        return self.client

    async def post(self, url: str, headers: dict[str, str], content: bytes,
                   timeout: dict[str, Any]) -> httpx.Response:
        """POST `content`; the answer read whole, the connection back in the pool."""
        aiohttp_timeout = aiohttp.ClientTimeout(sock_connect=timeout.get("connect"), sock_read=timeout.get("read"),
                                                connect=timeout.get("pool"))
        with map_aiohttp_exceptions():
            async with self.session().post(url, headers=headers, data=content, allow_redirects=False,
                                           auto_decompress=False, compress=False, timeout=aiohttp_timeout) as answer:
                body = await answer.read()
                status, raw_headers = answer.status, answer.raw_headers
        return httpx.Response(status, headers=raw_headers, content=body)
