"""The worker threads' runtime (workers/runtime.py): a thread that stops closes its runtime (its
HTTP client, inside the thread's own loop) instead of leaving the connections to the garbage
collector; the catalog cache serves each settings object its own catalog."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def test_a_catalog_is_never_served_to_other_settings_that_reuse_an_id(tmp_path: Path) -> None:
    """An id() is reused once its object is freed: what the cache left under it for earlier
    settings (here planted by hand) must not be served to the new ones."""
    def settings_with(url: str, name: str) -> Any:
        path = tmp_path / f"{name}.toml"
        path.write_text(f'[providers.gemini]\nbase_url = "{url}"\n', "utf-8")
        return make_settings(tmp_path, catalog=path)

    old = settings_with("http://127.0.0.1:1/old", "old")
    new = settings_with("http://127.0.0.1:2/new", "new")
    runtime._catalogs[id(new)] = (old, runtime.catalog(old))  # what a freed object's id left behind
    assert runtime.catalog(new).providers["gemini"].base_url == "http://127.0.0.1:2/new"
    assert runtime.catalog(new) is runtime.catalog(new)  # and then loaded once
