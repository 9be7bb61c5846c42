"""How the benchmarks drive load: `bench._load` (raw sockets, its own process) and wrk, each
run to the end and its figures returned as a dict."""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

from bench import _procs


def run_load(mode: str, spec: dict[str, Any]) -> dict[str, Any]:
    path = _procs.WORKDIR / f"load-{mode}.json"
    path.write_text(json.dumps(spec))
    out = subprocess.run([_procs.PYTHON, "-m", "bench._load", mode, str(path)], cwd=_procs.ROOT,
                         capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout)  # type: ignore[no-any-return]


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def run_wrk(port: int, raw: str, connections: int, seconds: float, keys: list[str] | None = None) -> dict[str, Any]:
    head, _, body = raw.partition("\r\n\r\n")
    method, path = head.split(" ")[:2]
    lines = [f"wrk.method = {json.dumps(method)}", f"wrk.path = {json.dumps(path)}"]
    if body:
        lines.append(f"wrk.body = {json.dumps(body)}")
    for header in head.split("\r\n")[1:]:
        name, _, value = header.partition(": ")
        if name.lower() not in ("host", "content-length"):
            lines.append(f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}")
    if keys:  # rotate the API key per request: requests spread over all the accounts
        lines += ["keys = {" + ", ".join(json.dumps(k) for k in keys) + "}", "n = 0",
                  "request = function()", "  n = n + 1",
                  '  wrk.headers["Authorization"] = "Bearer " .. keys[(n % #keys) + 1]',
                  "  return wrk.format()", "end"]
    script = _procs.WORKDIR / f"wrk-{port}.lua"
    script.write_text("\n".join(lines) + "\n")
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(script),
                          f"http://127.0.0.1:{port}"], capture_output=True, text=True, timeout=seconds + 60)
    text = out.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
    pcts = {p: float(v) * _UNITS[u] for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)}
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    total = re.search(r"(\d+) requests in", text)
    return {"rps": rps, "p50": pcts.get("50"), "p99": pcts.get("99"), "non_200": int(bad.group(1)) if bad else 0,
            "requests": int(total.group(1)) if total else 0, "tool": "wrk"}
