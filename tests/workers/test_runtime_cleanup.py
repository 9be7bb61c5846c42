"""A worker thread that stops closes its runtime (its HTTP client, inside the thread's own loop),
instead of leaving the connections to the garbage collector."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.db import get_engine
from common.migrate import upgrade
from tests.conftest import make_settings
from tests.workers.conftest import JOB_DEFAULTS
from tests.workers.helpers import Jobs, start_worker, stop_worker
from workers import runtime


def test_a_stopping_worker_thread_closes_the_runtime_it_built(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    closed: list[bool] = []
    original = runtime.ThreadRuntime.close

    def recording_close(self: runtime.ThreadRuntime) -> None:
        original(self)
        closed.append(self._http is None or self._http.is_closed)

    monkeypatch.setattr(runtime.ThreadRuntime, "close", recording_close)
    settings = make_settings(tmp_path, **JOB_DEFAULTS)
    engine = get_engine(settings.database_url)
    upgrade(engine)
    worker = start_worker(settings, threads=1)
    try:
        jobs = Jobs(settings, engine)
        job_id = jobs.submit(jobs.account())
        assert jobs.wait(job_id)["status"] == "succeeded"
        assert closed == []  # the runtime lives across jobs
    finally:
        stop_worker(worker)
    assert closed == [True]  # the one thread's runtime, its HTTP client closed
