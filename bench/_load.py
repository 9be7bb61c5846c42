"""Load generators, run in their own process: raw-socket HTTP/1.1 keep-alive clients, so the
client's own cost is a few tens of microseconds per request and the same for every target.

    python -m bench._load seq  SPEC.json   sequential requests, targets interleaved block by block
    python -m bench._load conc SPEC.json   N concurrent connections for S seconds (the fallback when
                                           wrk is not installed), asyncio + uvloop when available
    python -m bench._load submit SPEC.json  job submissions over N threads (bench/jobs.py)
    python -m bench._load light SPEC.json   one job at a time, polled until done (bench/jobs.py)

SPEC.json: {"targets": {name: {"port": int, "raw": str (the whole request, latin-1)}}, ...}.
Prints one JSON object on stdout. Bounded by count and time; talks to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from typing import Any

HOST = "127.0.0.1"


class Conn:
    """One keep-alive connection; `request` returns (status, first-body-byte time, end time, body)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None
        self.buf = b""

    def _connect(self) -> None:
        self.sock = socket.create_connection((HOST, self.port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def _fill(self) -> None:
        assert self.sock is not None
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        self.buf += data

    def _until(self, sep: bytes) -> bytes:
        while True:
            i = self.buf.find(sep)
            if i >= 0:
                out, self.buf = self.buf[:i], self.buf[i + len(sep):]
                return out
            self._fill()

    def _exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def request(self, raw: bytes) -> tuple[int, float, float, bytes]:
        if self.sock is None:
            self._connect()
        assert self.sock is not None
        try:
            self.sock.sendall(raw)
            head = self._until(b"\r\n\r\n")
        except (ConnectionError, OSError):  # an idle keep-alive connection the server closed: once more
            self._connect()
            self.sock.sendall(raw)
            head = self._until(b"\r\n\r\n")
        status = int(head[9:12])
        headers = {}
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        first = 0.0
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            parts = []
            while True:
                size = int(self._until(b"\r\n").split(b";")[0], 16)
                if size == 0:
                    self._until(b"\r\n")
                    break
                parts.append(self._exactly(size))
                if not first:
                    first = time.perf_counter()
                self._exactly(2)
            body = b"".join(parts)
        else:
            body = self._exactly(int(headers.get(b"content-length", b"0")))
            first = time.perf_counter()
        end = time.perf_counter()
        if headers.get(b"connection", b"").lower() == b"close":
            self.close()
        return status, first, end, body

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def sequential(spec: dict[str, Any]) -> dict[str, Any]:
    """Per round, per target: `block` sequential requests on that target's connection."""
    targets = spec["targets"]
    conns = {name: Conn(t["port"]) for name, t in targets.items()}
    raws = {name: t["raw"].encode("latin-1") for name, t in targets.items()}
    out: dict[str, Any] = {name: {"total": [], "ttfb": [], "errors": 0, "sample": ""} for name in targets}
    for name in targets:  # warm-up (pools, caches, JIT-less but lazy imports)
        for _ in range(spec.get("warmup", 200)):
            conns[name].request(raws[name])
    deadline = time.monotonic() + spec.get("max_seconds", 300)
    for _ in range(spec["rounds"]):
        for name in targets:
            rec = out[name]
            conns[name].close()  # a fresh connection per block, warmed by one unmeasured request
            conns[name].request(raws[name])
            for _ in range(spec["block"]):
                t0 = time.perf_counter()
                status, first, end, body = conns[name].request(raws[name])
                if status != 200 or (spec.get("expect") and spec["expect"].encode() not in body):
                    rec["errors"] += 1
                    rec["sample"] = body[:300].decode(errors="replace")
                    continue
                rec["total"].append(end - t0)
                rec["ttfb"].append(first - t0)
        if time.monotonic() > deadline:
            break
    for c in conns.values():
        c.close()
    return out


async def _conc_one(port: int, raw: bytes, until: float, counts: list[int], lats: list[float], limit: int) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        while time.perf_counter() < until and counts[0] < limit:
            t0 = time.perf_counter()
            writer.write(raw)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length, chunked = 0, False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
            if chunked:
                while True:
                    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    await reader.readexactly(size + 2)
                    if size == 0:
                        break
            else:
                await reader.readexactly(length)
            if status == 200:
                counts[0] += 1
                lats.append(time.perf_counter() - t0)
            else:
                counts[1] += 1
    finally:
        writer.close()


async def _concurrent(spec: dict[str, Any]) -> dict[str, Any]:
    t = spec["targets"][spec["target"]]
    raws = [r.encode("latin-1") for r in t.get("raws", [t.get("raw", "")])]
    counts, lats = [0, 0], []  # ok, non-200
    start = time.perf_counter()
    until = start + spec["seconds"]
    await asyncio.gather(*(_conc_one(t["port"], raws[i % len(raws)], until, counts, lats, spec.get("limit", 10**7))
                           for i in range(spec["connections"])))
    wall = time.perf_counter() - start
    lats.sort()
    return {"requests": counts[0], "non_200": counts[1], "seconds": wall, "rps": counts[0] / wall,
            "p50": lats[len(lats) // 2] if lats else None, "p99": lats[int(len(lats) * 0.99)] if lats else None}


def main() -> None:
    mode, path = sys.argv[1], sys.argv[2]
    with open(path) as f:
        spec = json.load(f)
    if mode == "seq":
        result = sequential(spec)
    elif mode == "submit":
        result = submit(spec)
    elif mode == "light":
        result = poll_until_done(spec)
    else:
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        result = asyncio.run(_concurrent(spec))
    json.dump(result, sys.stdout)



def submit(spec: dict[str, Any]) -> dict[str, Any]:
    """`count` POSTs spread over `connections` threads, each on its own keep-alive connection; returns
    per request (send time, answer time, status, job id) with times on this host's wall clock.
    With `raws` (a list) instead of `raw`, the requests take them in turn (one per account)."""
    import threading

    raws = [r.encode("latin-1") for r in spec.get("raws") or [spec["raw"]]]
    results: list[tuple[float, float, int, str]] = []
    lock = threading.Lock()
    left = [spec["count"]]
    deadline = time.monotonic() + spec.get("max_seconds", 300)

    def worker() -> None:
        conn = Conn(spec["port"])
        while time.monotonic() < deadline:
            with lock:
                if left[0] <= 0:
                    break
                left[0] -= 1
                raw = raws[left[0] % len(raws)]
            sent = time.time()
            status, _, _, body = conn.request(raw)
            job_id = json.loads(body).get("id", "") if status in (200, 202) else body[:200].decode(errors="replace")
            with lock:
                results.append((sent, time.time(), status, job_id))
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(spec["connections"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"results": results}


def poll_until_done(spec: dict[str, Any]) -> dict[str, Any]:
    """Light load: submit one job, poll GET /jobs/{id} every `interval` s until it is terminal, repeat.
    Returns per job (POST sent, 202 received, first poll that saw it terminal, status, id, polls)."""
    submit_raw = spec["submit_raw"].encode("latin-1")
    conn = Conn(spec["port"])
    out = []
    deadline = time.monotonic() + spec.get("max_seconds", 120)
    for _ in range(spec["count"]):
        if time.monotonic() > deadline:
            break
        t0 = time.time()
        status, _, _, body = conn.request(submit_raw)
        t1 = time.time()
        if status != 202:  # refused (e.g. the shared database restarting): counted, not followed
            out.append((t0, t1, time.time(), f"http {status}", "", 0))
            time.sleep(spec.get("gap", 0.05))
            continue
        job_id = json.loads(body)["id"]
        poll = spec["poll_raw"].replace("JOB_ID", job_id).encode("latin-1")
        polls, final = 0, ""
        until = time.monotonic() + 30
        while time.monotonic() < until:
            _, _, _, body = conn.request(poll)
            polls += 1
            final = json.loads(body)["status"]
            if final in ("succeeded", "failed", "canceled"):
                break
            time.sleep(spec.get("interval", 0.002))
        out.append((t0, t1, time.time(), final, job_id, polls))
        time.sleep(spec.get("gap", 0.05))
    conn.close()
    return {"jobs": out}


if __name__ == "__main__":
    main()
