"""Fake upstream fixtures shared by the provider and gateway tests (a pytest plugin, loaded by
tests/conftest.py): one server per module, reset before each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes import anthropic_upstream, gemini_upstream, openai_upstream
from tests.fakes.upstream import FakeUpstream


@pytest.fixture(scope="module")
def _openai_server() -> Iterator[FakeUpstream]:
    with openai_upstream.run() as fake:
        yield fake


@pytest.fixture(scope="module")
def _anthropic_server() -> Iterator[FakeUpstream]:
    with anthropic_upstream.run() as fake:
        yield fake


@pytest.fixture(scope="module")
def _gemini_server() -> Iterator[FakeUpstream]:
    with gemini_upstream.run() as fake:
        yield fake


@pytest.fixture
def openai_fake(_openai_server: FakeUpstream) -> FakeUpstream:
    _openai_server.reset()
    return _openai_server


@pytest.fixture
def anthropic_fake(_anthropic_server: FakeUpstream) -> FakeUpstream:
    _anthropic_server.reset()
    return _anthropic_server


@pytest.fixture
def gemini_fake(_gemini_server: FakeUpstream) -> FakeUpstream:
    _gemini_server.reset()
    return _gemini_server
