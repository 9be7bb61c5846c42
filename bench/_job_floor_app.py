"""The floor under bench/jobs.py's image jobs, the API's side (never used in production):

    uvicorn bench._job_floor_app:app

The real app (`api.app.create_app`: its middleware, error handlers and routes), with one route
put in front of the others for `POST /api/v1/images/generations` that validates the same body
model, sends the job's message to bench._job_floor_actor over the same broker, and answers 202.
Dropped: the key lookup, the rate limit, the reservation with the job row.

Measured after the gateway in the same run (bench/jobs.py --floor), it splits a job's machine
CPU in two: what the web stack, Dramatiq, Redis, the PNG and the file cost (the floor), and what
authentication, billing and the job's rows cost on top (the gateway minus the floor).
"""

from __future__ import annotations

import time

from fastapi import APIRouter
from starlette.responses import Response

from api.app import create_app
from api.responses import json_response
from api.schemas.media import ImageGenerationRequest, parse_size
from bench._job_floor_actor import floor_image_job
from common.ids import new_id

router = APIRouter()


@router.post("/api/v1/images/generations")
async def floor_submit(body: ImageGenerationRequest) -> Response:
    width, height = parse_size(body.size)
    job_id, created = new_id("job"), time.time()
    floor_image_job.send(job_id, created, body.prompt, width, height)
    return json_response({"id": job_id, "object": "job", "type": "image", "status": "queued",
                          "created_at": int(created)}, status=202)


app = create_app()
app.router.routes.insert(0, router.routes[0])  # matched before the real images route
