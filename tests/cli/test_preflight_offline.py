"""A production start with no provider key and no simulation: every model answers 404
model_offline, and the start said nothing of it (found by a production-shape walkthrough)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli import preflight
from common.catalog import load_catalog
from common.settings import Settings


def settings(simulate: str) -> Settings:
    return Settings(_env_file=None, simulate=simulate, redis_url="redis://127.0.0.1:6379/0")  # type: ignore[call-arg]


@pytest.fixture
def no_provider_keys(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    catalog = load_catalog(settings("0"))
    names = sorted({p.api_key_env for p in catalog.providers.values() if p.api_key_env})
    for name in names:
        monkeypatch.delenv(name, raising=False)
    return names


def test_a_start_with_no_provider_key_and_no_simulation_says_every_model_is_offline(
        no_provider_keys: list[str]) -> None:
    production = settings("0")
    warning = preflight.offline_warning(load_catalog(production), production)
    assert warning is not None and "every model is offline" in warning and "HELYX_SIMULATE=1" in warning
    assert "OPENAI_API_KEY" in warning and "GEMINI_API_KEY" in warning


def test_no_warning_with_simulation_or_with_one_key(no_provider_keys: list[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    simulated = settings("1")
    assert preflight.offline_warning(load_catalog(simulated), simulated) is None
    monkeypatch.setenv("OPENAI_API_KEY", "sk-set")
    production = settings("0")
    assert preflight.offline_warning(load_catalog(production), production) is None
    assert preflight.keyed_providers(load_catalog(production), production) == ["openai (OPENAI_API_KEY)"]


def test_no_warning_when_a_model_is_on_the_simulated_provider(no_provider_keys: list[str], tmp_path: Path) -> None:
    """Such a model answers without any key: "every model is offline" would be wrong (found by a
    diff review)."""
    catalog_file = tmp_path / "catalog.toml"
    catalog_file.write_text('[models."house-sim"]\nname = "House"\nkind = "chat"\nrate = "0.01"\nmin_plan = "free"\n'
                            'provider = "simulated"\nupstream_model = "sim"\n')
    production = Settings(_env_file=None, simulate="0", redis_url="redis://127.0.0.1:6379/0",  # type: ignore[call-arg]
                          catalog=str(catalog_file))
    assert preflight.offline_warning(load_catalog(production), production) is None


def test_a_key_that_is_a_placeholder_is_named_without_its_value(no_provider_keys: list[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """`export OPENAI_API_KEY=sk-... GEMINI_API_KEY=...` pasted from the README made those models real,
    even with HELYX_SIMULATE=1: every call then failed with a 502 (a new user's walkthrough)."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-...")
    monkeypatch.setenv("GEMINI_API_KEY", "...")
    monkeypatch.setenv("GROQ_API_KEY", "gsk-real-looking-key")
    simulated = settings("1")
    warning = preflight.placeholder_warning(load_catalog(simulated), simulated)
    assert warning is not None and warning.startswith("warning: GEMINI_API_KEY, OPENAI_API_KEY look(s) like"), warning
    assert "sk-..." not in warning and "GROQ" not in warning
    monkeypatch.setenv("OPENAI_API_KEY", "sk-real")
    monkeypatch.delenv("GEMINI_API_KEY")
    assert preflight.placeholder_warning(load_catalog(simulated), simulated) is None
