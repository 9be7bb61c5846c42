"""The floor under bench/jobs.py's image jobs, the worker's side (never used in production):

    python -m dramatiq bench._job_floor_actor --processes 2 --threads 8

An actor on the same broker (workers.broker: Dramatiq's Redis broker with the wake-ups) that does
what a Helyx image job does minus its rows: the same thread runtime and simulated provider (the
PNG), the same storage (the file written and fsynced), then one Redis push recording when it
started and finished (for bench/jobs.py's count). Dropped: the claim, the lease, the success with
its file row and the settlement, i.e. every database statement of a job.
"""

from __future__ import annotations

import time
from functools import cache
from typing import Any

import dramatiq
import redis

from common.ids import new_id
from common.jobs import files as job_files
from common.providers.base import ImageRequest, MediaFile
from workers import context, runtime
from workers.broker import broker
from workers.runtime import ThreadRuntime, catalog

QUEUE = "floor-images"
DONE_KEY = "floor:done"  # one "job_id created started finished" entry per job


@cache
def _redis() -> redis.Redis:
    url = context.settings().redis_url
    assert url, "the floor runs on Redis (HELYX_REDIS_URL)"
    return redis.Redis.from_url(url)


@dramatiq.actor(broker=broker, queue_name=QUEUE, max_retries=0)
def floor_image_job(job_id: str, created: float, prompt: str, width: int, height: int) -> None:
    started = time.time()

    async def produce(rt: ThreadRuntime) -> list[MediaFile]:
        entry = catalog(rt.settings).get("nano-banana-pro")
        request = ImageRequest(entry.upstream_model, prompt, width, height, 1)
        return await rt.providers().image(entry).generate_images(request)

    media = runtime.current().run(produce)
    for item in media:
        key = job_files.file_key("acct_floor", job_id, new_id("file"), ".png")
        context.storage().put(key, item.data, item.content_type)
    _redis().rpush(DONE_KEY, f"{job_id} {created} {started} {time.time()}")


def finished(client: Any) -> list[tuple[str, float, float, float]]:
    """Every job the floor's workers finished: (id, created, started, finished)."""
    rows = []
    for raw in client.lrange(DONE_KEY, 0, -1):
        job_id, created, started, done = raw.decode().split()
        rows.append((job_id, float(created), float(started), float(done)))
    return rows
