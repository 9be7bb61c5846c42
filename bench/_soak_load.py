"""bench/soak.py's load: submissions at a fixed rate (open loop), each job polled to its end, and
what every answer was (status, latency, the charge shown)."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx

from bench._soak_accounts import BIG_WEIGHT, Account

FREE_MODELS = ("gpt-4o", "helyx-3.5", "claude-3-5-sonnet", "kimi-k2.6", "minimax-m2.7")
PLUS_MODELS = (*FREE_MODELS, "claude-4.7", "grok-pro")
TERMINAL = ("succeeded", "failed", "canceled")
SUBMISSIONS = ("chat", "stream", "stream_cut", "image", "video")
WORDS = ("lighthouse", "ledger", "river", "quantum", "harbor", "violet", "engine", "meadow", "cipher",
         "falcon", "orbit", "lantern", "granite", "whisper", "copper", "tide", "saffron", "atlas", "ember",
         "prism", "thicket", "nomad", "summit")


@dataclass
class Job:
    id: str
    kind: str
    account: Account
    submitted: float
    final: str | None = None
    seen_done: float | None = None


@dataclass
class Stats:
    status: Counter[tuple[str, int | str]] = field(default_factory=Counter)
    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    samples: dict[tuple[str, int | str], list[str]] = field(default_factory=lambda: defaultdict(list))
    charges: dict[str, Decimal] = field(default_factory=dict)  # generation id -> credits shown
    cut_ids: list[str] = field(default_factory=list)
    cut_completed: int = 0
    incomplete_streams: int = 0
    stream_errors: int = 0
    jobs: dict[str, Job] = field(default_factory=dict)
    twins: Counter[str] = field(default_factory=Counter)
    lag: list[float] = field(default_factory=list)
    dropped: int = 0
    sent: int = 0
    done: int = 0
    t0: float = 0.0
    events: list[tuple[float, str, int | str, float]] = field(default_factory=list)  # start, kind, status, s
    inflight: list[tuple[float, int]] = field(default_factory=list)

    def client_error(self, kind: str, exc: Exception, start: float) -> None:
        seconds = time.perf_counter() - start
        self.record(kind, f"client:{type(exc).__name__}", seconds, f"after {seconds:.3f} s: {exc!r}")

    def record(self, kind: str, status: int | str, seconds: float, body: bytes | str = b"") -> None:
        if status == 402 and isinstance(body, bytes) and b'"insufficient_quota"' not in body:
            status = "402 without insufficient_quota"  # the SPEC's type for a balance that cannot cover
        self.status[(kind, status)] += 1
        self.events.append((time.perf_counter() - seconds, kind, status, seconds))
        if isinstance(status, int):  # a client-side error has no latency worth mixing in
            self.latency[kind].append(seconds)
        ok = {"poll": (200,), "cancel": (200, 409)}.get(kind, (200, 202, 402))
        if status not in ok and len(self.samples[(kind, status)]) < 3:
            text = body.decode(errors="replace") if isinstance(body, bytes) else body
            self.samples[(kind, status)].append(text[:300])


class Load:
    def __init__(self, args: argparse.Namespace, client: httpx.AsyncClient, accounts: list[Account]) -> None:
        self.args = args
        self.client = client
        self.accounts = accounts
        self.stats = Stats()
        big = max(a.grant for a in accounts)
        self.account_weights = [BIG_WEIGHT if a.grant == big and big > 2_000 else 1 for a in accounts]
        self.pollers: set[asyncio.Task[None]] = set()
        self.inflight: set[asyncio.Task[None]] = set()

    async def run(self) -> float:
        """Send at the fixed rate for the window; returns the window's length in seconds."""
        args, loop = self.args, asyncio.get_running_loop()
        total = int(args.rate * args.seconds)
        weights = [args.mix_chat, args.mix_stream, args.mix_cut, args.mix_image, args.mix_video]
        t0 = loop.time()
        self.stats.t0 = time.perf_counter()
        for i in range(total):
            wait = t0 + i / args.rate - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            else:
                self.stats.lag.append(-wait)
            if len(self.inflight) >= args.max_inflight:
                self.stats.dropped += 1
                continue
            rnd = random.Random(args.seed * 1_000_003 + i)
            kind = rnd.choices(SUBMISSIONS, weights)[0]
            acct = rnd.choices(self.accounts, self.account_weights)[0]
            task = asyncio.create_task(self.one(i, kind, acct, rnd))
            self.inflight.add(task)
            task.add_done_callback(self.inflight.discard)
            self.stats.sent += 1
        return loop.time() - t0

    async def drain(self, timeout: float) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        for group in (self.inflight, self.pollers):
            while group:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    for task in list(group):
                        task.cancel()
                    return
                await asyncio.wait(list(group), timeout=left)

    async def one(self, i: int, kind: str, acct: Account, rnd: random.Random) -> None:
        start = time.perf_counter()
        try:
            if kind in ("chat", "stream", "stream_cut"):
                await self.chat(kind, acct, rnd)
            elif kind == "video" and acct.plan != "free":
                await self.video(acct, rnd)
            else:
                await self.image(i, acct, rnd)
        except httpx.HTTPError as exc:
            self.stats.client_error(kind, exc, start)
        finally:
            self.stats.done += 1

    def _prompt(self, rnd: random.Random) -> str:
        return " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(5, 60)))

    async def chat(self, kind: str, acct: Account, rnd: random.Random) -> None:
        body: dict[str, Any] = {"model": rnd.choice(PLUS_MODELS if acct.plan != "free" else FREE_MODELS),
                                "messages": [{"role": "user", "content": self._prompt(rnd)}]}
        if rnd.random() < 0.3:
            body["messages"].insert(0, {"role": "system", "content": "You are terse."})
        if rnd.random() < 0.5:
            body["max_tokens"] = rnd.randint(8, 256)
        start = time.perf_counter()
        if kind == "chat":
            r = await self.client.post("/api/v1/chat/completions", json=body, headers=acct.auth)
            self.stats.record(kind, r.status_code, time.perf_counter() - start, r.content)
            if r.status_code == 200:
                helyx = json.loads(r.content, parse_float=Decimal)["helyx"]
                self.stats.charges[helyx["generation_id"]] = Decimal(helyx["credits_charged"])
            return
        body["stream"] = True
        if rnd.random() < 0.5:
            body["stream_options"] = {"include_usage": True}
        cut_after = rnd.randint(1, 3) if kind == "stream_cut" else None
        async with self.client.stream("POST", "/api/v1/chat/completions", json=body, headers=acct.auth) as r:
            if r.status_code != 200:
                self.stats.record(kind, r.status_code, time.perf_counter() - start, await r.aread())
                return
            await self._read_stream(kind, r, start, cut_after)

    async def _read_stream(self, kind: str, r: httpx.Response, start: float, cut_after: int | None) -> None:
        chunks, done, gen_id, final = 0, False, None, None
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if chunks == 0 and gen_id is None:
                self.stats.latency[f"{kind}_ttfb"].append(time.perf_counter() - start)
            if line == "data: [DONE]":
                done = True
                break
            event = json.loads(line[6:], parse_float=Decimal)
            if "error" in event:
                self.stats.stream_errors += 1
            gen_id = gen_id or event.get("id")
            if event.get("helyx"):
                final = event["helyx"]
            if event.get("choices") and event["choices"][0]["delta"].get("content"):
                chunks += 1
                if cut_after is not None and chunks >= cut_after:
                    break
        self.stats.record(kind, r.status_code, time.perf_counter() - start)
        if final is not None and done:
            self.stats.charges[final["generation_id"]] = Decimal(final["credits_charged"])
        if cut_after is not None:
            if done:
                self.stats.cut_completed += 1
            elif gen_id:
                self.stats.cut_ids.append(gen_id)
        elif not done:
            self.stats.incomplete_streams += 1

    async def image(self, i: int, acct: Account, rnd: random.Random) -> None:
        body = {"model": "nano-banana-pro", "prompt": self._prompt(rnd),
                "size": rnd.choice(("256x256", "256x256", "512x512")), "n": rnd.choice((1, 1, 1, 2))}
        headers = {**acct.auth, "Prefer": "respond-async"}
        twins = 1
        if rnd.random() < 0.10:
            headers["Idempotency-Key"] = f"soak-{self.args.seed}-{i}"
            twins = 2 if rnd.random() < 0.5 else 1
        start = time.perf_counter()
        sends = [self.client.post("/api/v1/images/generations", json=body, headers=headers) for _ in range(twins)]
        answers = await asyncio.gather(*sends)
        ids = set()
        for r in answers:
            self.stats.record("image", r.status_code, time.perf_counter() - start, r.content)
            if r.status_code == 202:
                ids.add(r.json()["id"])
        if twins == 2:
            codes = tuple(sorted(r.status_code for r in answers))
            self.stats.twins["same job" if codes == (202, 202) and len(ids) == 1 else
                             "different jobs" if len(ids) > 1 else f"statuses {codes}"] += 1
        for job_id in ids:
            self._track(Job(job_id, "image", acct, start), rnd)

    async def video(self, acct: Account, rnd: random.Random) -> None:
        body = {"model": "vo3", "prompt": self._prompt(rnd), "seconds": "4", "size": "1280x720"}
        start = time.perf_counter()
        r = await self.client.post("/api/v1/videos", json=body, headers=acct.auth)
        self.stats.record("video", r.status_code, time.perf_counter() - start, r.content)
        if r.status_code in (200, 201, 202):
            self._track(Job(r.json()["id"], "video", acct, start), rnd)

    def _track(self, job: Job, rnd: random.Random) -> None:
        if job.id in self.stats.jobs:
            return
        self.stats.jobs[job.id] = job
        task = asyncio.create_task(self.poll(job, cancel=rnd.random() < self.args.cancel_fraction))
        self.pollers.add(task)
        task.add_done_callback(self.pollers.discard)

    async def poll(self, job: Job, cancel: bool) -> None:
        deadline = job.submitted + self.args.job_deadline
        if cancel:
            start = time.perf_counter()
            try:
                r = await self.client.post(f"/api/v1/jobs/{job.id}/cancel", headers=job.account.auth)
                self.stats.record("cancel", r.status_code, time.perf_counter() - start, r.content)
            except httpx.HTTPError as exc:
                self.stats.client_error("cancel", exc, start)
        while time.perf_counter() < deadline:
            await asyncio.sleep(self.args.poll_interval)
            start = time.perf_counter()
            try:
                r = await self.client.get(f"/api/v1/jobs/{job.id}", headers=job.account.auth)
            except httpx.HTTPError as exc:
                self.stats.client_error("poll", exc, start)
                continue
            now = time.perf_counter()
            self.stats.record("poll", r.status_code, now - start, r.content)
            if r.status_code == 200 and r.json()["status"] in TERMINAL:
                job.final, job.seen_done = r.json()["status"], now
                self.stats.latency[f"{job.kind}_job_end_to_end"].append(now - job.submitted)
                return
        job.final = "client deadline passed"

