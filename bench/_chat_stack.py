"""bench/chat.py's stack: the fake upstream, the database with its accounts, and the gateways and
the floor app started and stopped around it (also used by bench/ab_chat.py)."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

from bench import _procs
from bench._procs import Proc

DB = "helyx_bench_chat"
MESSAGES = [{"role": "user", "content": "Hello! Say something short."}]


def raw_request(port: int, path: str, body: dict[str, Any], key: str) -> str:
    data = json.dumps(body, separators=(",", ":"))
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n{data}")


class Stack:
    """The fake upstream, the database, the account; gateways come and go."""

    def __init__(self) -> None:
        self.db_url = _procs.fresh_pg_database(DB)
        _procs.flush_redis()
        self.fake_port = _procs.free_port()
        self.fake = Proc("fake-upstream", [_procs.PYTHON, "-m", "tests.fakes.openai_upstream", "--port",
                                           str(self.fake_port)], _procs.helyx_env())
        _procs.wait_http(self.fake_port, "/v1/chat/completions", proc=self.fake)
        catalog = _procs.WORKDIR / "catalog.toml"
        catalog.write_text(f'[providers.openai]\nbase_url = "http://127.0.0.1:{self.fake_port}/v1"\n')
        big = "1000000000"
        self.env = _procs.helyx_env(
            HELYX_DATABASE_URL=self.db_url, HELYX_REDIS_URL=_procs.REDIS_URL, HELYX_CATALOG=str(catalog),
            HELYX_SIMULATE="0", OPENAI_API_KEY="sk-bench-not-a-real-key",
            HELYX_STORAGE_DIR=str(_procs.WORKDIR / "files"),
            HELYX_SECRET_KEY="bench-" + "0" * 58, HELYX_LOG_LEVEL="WARNING",
            HELYX_RATE_LIMIT_FREE=big, HELYX_RATE_LIMIT_PLUS=big, HELYX_RATE_LIMIT_PRO=big, HELYX_RATE_LIMIT_ULTRA=big,
        )
        subprocess.run([_procs.HELYX, "migrate"], env=self.env, cwd=_procs.ROOT, check=True, capture_output=True)
        made = _procs.run_json([_procs.HELYX, "account", "create", "chat@bench.local", "--plan", "ultra"], self.env)
        self.account_id, self.key = made["account_id"], made["api_key"]
        _procs.run_json([_procs.HELYX, "credits", "grant", self.account_id, "100000000"], self.env)
        self.many_keys = [self.key, *_procs.more_accounts(self.db_url, 63, "chat")]
        self.gateway: Proc | None = None
        self.gateway_port = 0
        self.app = "api.main:app"
        self.floor: Proc | None = None
        self.floor_port = 0

    def start_gateway(self, workers: int, app: str | None = None) -> None:
        self.stop_gateway()
        app = app or self.app
        self.gateway_port = _procs.free_port()
        self.gateway = Proc(f"gateway-{workers}w", [
            str(_procs.VENV_BIN / "uvicorn"), app, "--host", "127.0.0.1", "--port", str(self.gateway_port),
            "--workers", str(workers), "--no-access-log", "--log-level", "warning", *_procs.uvicorn_http(),
        ], self.env)
        _procs.wait_http(self.gateway_port, "/healthz", proc=self.gateway)
        if workers > 1:  # every worker up, not just the first
            deadline = time.monotonic() + 60
            while len(self.worker_pids()) < workers and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(2)

    def start_floor(self) -> None:
        """bench/_floor_app.py, one worker: the same stack without authentication and billing."""
        self.floor_port = _procs.free_port()
        self.floor = Proc("floor", [
            str(_procs.VENV_BIN / "uvicorn"), "bench._floor_app:app", "--host", "127.0.0.1", "--port",
            str(self.floor_port), "--no-access-log", "--log-level", "warning", *_procs.uvicorn_http(),
        ], self.env)
        _procs.wait_http(self.floor_port, "/healthz", proc=self.floor)

    def stop_floor(self) -> None:
        if self.floor is not None:
            self.floor.stop()
            self.floor = None

    def worker_pids(self) -> list[int]:
        assert self.gateway is not None
        kids = [p for p in _procs.children(self.gateway.pid) if "multiprocessing" in _procs.cmdline(p)
                or "spawn_main" in _procs.cmdline(p)]
        return kids or [self.gateway.pid]

    def stop_gateway(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
            self.gateway = None

    def targets(self, stream: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {"model": "gpt-4o", "messages": MESSAGES}
        if stream:
            body["stream"] = True
        targets = {
            "direct": {"port": self.fake_port,
                       "raw": raw_request(self.fake_port, "/v1/chat/completions", body, "sk-x")},
            "gateway": {"port": self.gateway_port,
                        "raw": raw_request(self.gateway_port, "/api/v1/chat/completions", body, self.key)},
        }
        if self.floor is not None and not stream:
            targets["floor"] = {"port": self.floor_port,
                                "raw": raw_request(self.floor_port, "/api/v1/chat/completions", body, self.key)}
        return targets

    def stop(self) -> None:
        self.stop_gateway()
        self.stop_floor()
        self.fake.stop()
        _procs.drop_pg_database(DB)
