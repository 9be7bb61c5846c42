"""A stand-in for the simulated image provider that the worker tests script call by call."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

from common.providers import simulated_media
from common.providers.base import ImageRequest, MediaFile
from common.providers.simulated_media import render_png


class ScriptedImages:
    """Stands in for the simulated image provider. `behaviour(call, request)` is awaited for each
    call and returns the files (or raises); calls, concurrency and cancellations are counted."""

    def __init__(self, behaviour: Callable[[int, ImageRequest], Any] | None = None) -> None:
        self.behaviour = behaviour
        self.calls = 0
        self.running = 0
        self.max_running = 0
        self.cancelled = 0
        self.started = threading.Event()
        self._lock = threading.Lock()

    def install(self, monkeypatch: pytest.MonkeyPatch) -> ScriptedImages:
        monkeypatch.setattr(simulated_media, "SimulatedImageProvider", lambda delay: self)
        return self

    async def generate_images(self, request: ImageRequest) -> list[MediaFile]:
        with self._lock:
            self.calls += 1
            call = self.calls
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        self.started.set()
        try:
            if self.behaviour is not None:
                return await self.behaviour(call, request)  # type: ignore[no-any-return]
            return pngs(request)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            with self._lock:
                self.running -= 1


def pngs(request: ImageRequest) -> list[MediaFile]:
    return [MediaFile(render_png(request.prompt, request.width, request.height, i), "image/png")
            for i in range(request.n)]


def held_until_released() -> tuple[threading.Event, Callable[[int, ImageRequest], Any]]:
    """A ScriptedImages behaviour that answers once the event is set (at most 10 s)."""
    release = threading.Event()

    async def held(call: int, request: ImageRequest) -> list[MediaFile]:
        for _ in range(1000):
            if release.is_set():
                break
            await asyncio.sleep(0.01)
        return pngs(request)

    return release, held
