"""The actors: thin, each takes a job id and looks at the row (the truth) before acting."""

from __future__ import annotations

import dramatiq

from common.settings import JOB_HARD_LIMIT_SECONDS
from workers.broker import broker
from workers.execute import run_job
from workers.notify import delivery_slot, send_webhook, wait_for_a_slot

# A backstop above the per-type limits enforced inside run_job (settings *_job_time_limit).
_HARD_LIMIT_MS = JOB_HARD_LIMIT_SECONDS * 1000


@dramatiq.actor(broker=broker, queue_name="webhooks", max_retries=0, time_limit=_HARD_LIMIT_MS)
def deliver_webhook(job_id: str, attempt: int = 1, waited: int = 0) -> None:
    with delivery_slot() as free:
        if not free:  # as many deliveries under way as this process allows: the jobs keep their threads
            wait_for_a_slot(job_id, attempt, waited, retry=deliver_webhook.send_with_options)
            return
        send_webhook(job_id, attempt, retry=deliver_webhook.send_with_options, waited=waited)


@dramatiq.actor(broker=broker, queue_name="images", max_retries=0, time_limit=_HARD_LIMIT_MS)
def run_image_job(job_id: str) -> None:
    run_job(job_id, requeue=run_image_job.send_with_options, notify=deliver_webhook.send)


@dramatiq.actor(broker=broker, queue_name="videos", max_retries=0, time_limit=_HARD_LIMIT_MS)
def run_video_job(job_id: str) -> None:
    run_job(job_id, requeue=run_video_job.send_with_options, notify=deliver_webhook.send)


ACTOR_FOR_TYPE = {"image": run_image_job, "video": run_video_job}


def enqueue(job_id: str, job_type: str, delay_ms: int | None = None) -> None:
    """Dispatch a job id to its queue (the row must be committed first)."""
    ACTOR_FOR_TYPE[job_type].send_with_options(args=(job_id,), delay=delay_ms)
