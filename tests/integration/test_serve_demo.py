"""The README's first command, `helyx serve --demo`: simulated offline but for a provider whose key
is set (SPEC §6), which it says as it starts; and one demo key at a time however often it is
started."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from tests.integration.helpers_processes import HELYX, Proc, Processes, base_env, free_port, wait_ready

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 16}


def _demo(procs: Processes, env: dict[str, str]) -> tuple[Proc, str]:
    port = free_port()
    proc = procs.start("demo", [HELYX, "serve", "--demo", "--host", "127.0.0.1", "--port", str(port)], env, port)
    wait_ready(proc, 40)
    found = re.search(r'"api_key": "(hx-[^"]+)"', proc.log())
    assert found, proc.log()
    return proc, found.group(1)


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_the_demo_names_the_providers_it_calls_for_real_and_keeps_one_key(tmp_path: Path) -> None:
    env = base_env(database_url=f"sqlite:///{tmp_path / 'helyx.db'}", storage_dir=tmp_path / "files")
    with Processes(tmp_path / "procs") as procs, httpx.Client(timeout=20, trust_env=False) as http:
        first, first_key = _demo(procs, env)
        assert "not simulated" not in first.log()  # no key set: all offline
        model = http.get(first.api + "/models/gpt-4o", headers=_auth(first_key)).json()
        assert model["simulated"] is True, model
        answer = http.post(first.api + "/chat/completions", headers=_auth(first_key), json=CHAT)
        assert answer.status_code == 200, answer.text
        assert answer.json()["system_fingerprint"] == "helyx-simulated"
        assert first.terminate() == 0

        # The same database: the same account, a new key, the last one revoked. And a provider key
        # in the environment makes that provider's models real, and the start says so.
        second, second_key = _demo(procs, {**env, "OPENAI_API_KEY": "sk-would-be-spent"})
        assert "not simulated, as their keys are set: the models of openai (OPENAI_API_KEY)" in second.log()
        model = http.get(second.api + "/models/gpt-4o", headers=_auth(second_key)).json()
        assert model["simulated"] is False, model
        refused = http.get(second.api + "/credits", headers=_auth(first_key))
        assert refused.status_code == 401, refused.text
        listed = http.get(second.api + "/keys", headers=_auth(second_key)).json()["data"]
        assert [k["revoked_at"] is None for k in listed].count(True) == 1, listed
