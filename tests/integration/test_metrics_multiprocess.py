"""/metrics with several uvicorn workers and PROMETHEUS_MULTIPROC_DIR (README "Metrics"): every
scrape, whichever process answers it, reports the requests of all processes, summed."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict

from tests.integration.faults import isolated_redis_url
from tests.integration.helpers_processes import HELYX, Processes, base_env, free_port, wait_ready
from tests.waiting import until

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

REQUESTS = 60
BATCHES = 20
COUNTED = re.compile(r'^helyx_http_requests_total\{method="GET",route="/api/v1/credits",status="401"\} (\S+)$',
                     re.MULTILINE)


def test_every_scrape_sums_the_requests_of_every_worker_process(pg_url: str, tmp_path: Path) -> None:
    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    env = base_env(database_url=pg_url, redis_url=isolated_redis_url(), simulate=1, storage_dir=tmp_path / "files",
                   secret_key="metrics-signing-secret-0123456789")
    env["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc)
    with Processes(tmp_path / "procs") as procs:
        port = free_port()
        api = procs.start("serve", [HELYX, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
                          env, port)
        wait_ready(api, 60)

        def unauthenticated(_: int) -> int:  # a connection each, so both processes take some
            return httpx.get(api.api + "/credits", timeout=10, trust_env=False).status_code

        def writers() -> int:
            """The processes whose counter file counts some of these requests (not only /readyz's probes)."""
            return sum(1 for path in multiproc.glob("counter_*.db") if _counted(path) > 0)

        # The second process may still be starting when the first answers, and the kernel may hand one process
        # every connection of a batch: batches go on until both processes have counted some (bounded).
        sent = 0
        with ThreadPoolExecutor(8) as pool:
            for _ in range(BATCHES):
                assert set(pool.map(unauthenticated, range(REQUESTS))) == {401}
                sent += REQUESTS
                if writers() >= 2:
                    break
        assert writers() >= 2  # two processes wrote, so the sum below spans both

        def scrape() -> float:
            found = COUNTED.search(httpx.get(api.url + "/metrics", timeout=10, trust_env=False).text)
            return float(found.group(1)) if found else 0.0

        # a process counts a request just after its last byte is sent: the last may land a moment after its answer
        until(lambda: scrape() == sent, lambda: f"scraped {scrape()}, sent {sent}", seconds=10, every=0.05)
        scraped = [scrape() for _ in range(12)]
    assert scraped == [sent] * 12


def _counted(path: Path) -> float:
    """The unauthenticated GET /credits one process's counter file holds (what /metrics sums)."""
    for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path)):
        metric, _, labels, _ = json.loads(key)
        if metric == "helyx_http_requests" and labels == {"method": "GET", "route": "/api/v1/credits", "status": "401"}:
            return float(value)
    return 0.0
