"""The chat adapters' direct POST (common.providers.aiohttp_transport) against a raw HTTP server
on 127.0.0.1: what it sends, how it reads the answer, and how its failures map, the same as
the transport's own path through httpx."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest

from common.errors import UpstreamError, UpstreamTimeout
from common.providers.error_blocks import upstream_errors
from common.providers.http import build_http_client

pytestmark = pytest.mark.anyio

Handler = Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """Reads one request head + body per exchange and lets `handler` write the answer."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[bytes] = []
        self.connections = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                await self.handler(request, writer)
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()


@asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[tuple[RawServer, str]]:
    state = RawServer(handler)
    server = await asyncio.start_server(state.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield state, f"http://127.0.0.1:{port}/v1/chat/completions"
    finally:
        server.close()


def answer(status: int, body: bytes, *headers: bytes) -> bytes:
    head = [f"HTTP/1.1 {status} X".encode(), b"content-type: application/json",
            f"content-length: {len(body)}".encode(), *headers]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


async def test_it_sends_the_clients_request_and_reuses_one_connection() -> None:
    async def ok(request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(answer(200, b'{"ok": true}', b"x-upstream: 1"))

    async with raw_server(ok) as (server, url), build_http_client(2.0, 5.0) as client:
        first = await client.post_json(url, {"model": "m", "text": "é"}, {"authorization": "Bearer k"})
        second = await client.post_json(httpx.URL(url), {"n": 2}, {})
    assert first.status_code == 200 and first.json() == {"ok": True} and first.headers["x-upstream"] == "1"
    assert second.json() == {"ok": True}
    assert server.connections == 1  # kept alive and pooled
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v1/chat/completions HTTP/1.1"
    sent = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert sent["user-agent"] == "helyx-gateway"
    assert sent["content-type"] == "application/json"
    assert sent["authorization"] == "Bearer k"
    assert "cookie" not in sent
    assert json.loads(body) == {"model": "m", "text": "é"}


async def test_a_compressed_answer_is_decoded_and_an_error_status_is_returned_as_is() -> None:
    packed = gzip.compress(b'{"error": {"message": "slow down"}}')

    async def gz(request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(answer(429, packed, b"content-encoding: gzip", b"retry-after: 3"))

    async with raw_server(gz) as (_, url), build_http_client(2.0, 5.0) as client:
        response = await client.post_json(url, {}, {})
    assert response.status_code == 429 and response.headers["retry-after"] == "3"
    assert response.json() == {"error": {"message": "slow down"}}


async def test_a_hang_up_mid_answer_is_a_broken_connection_not_an_unreachable_upstream() -> None:
    async def half(request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(answer(200, b'{"choices": [1, 2, 3]}')[:-8])
        await writer.drain()
        writer.close()

    async with raw_server(half) as (_, url), build_http_client(2.0, 5.0) as client:
        with pytest.raises(UpstreamError) as caught, upstream_errors("openai"):
            await client.post_json(url, {}, {})
    assert caught.value.retryable is True and caught.value.code != "upstream_unreachable"
    assert "broke" in caught.value.message


async def test_silence_is_a_timeout_and_a_closed_port_is_unreachable() -> None:
    async def silent(request: bytes, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    async with raw_server(silent) as (_, url), build_http_client(2.0, 0.3) as client:
        with pytest.raises(UpstreamTimeout), upstream_errors("openai"):
            await client.post_json(url, {}, {})
    async with build_http_client(2.0, 5.0) as client:  # the server above is gone: its port refuses
        with pytest.raises(UpstreamError) as caught, upstream_errors("openai"):
            await client.post_json(url, {}, {})
    assert caught.value.code == "upstream_unreachable" and caught.value.retryable is True


async def test_a_closed_client_refuses() -> None:
    client = build_http_client(2.0, 5.0)
    await client.aclose()
    with pytest.raises(RuntimeError):
        await client.post_json("http://127.0.0.1:9/v1/chat/completions", {}, {})
