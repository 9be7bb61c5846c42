"""HELYX_CATALOG: extends or replaces the built-in catalog; a mistake in it stops the start-up
with a message naming it, never a silent default (a misspelt `rate` must not leave the old price)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from common.catalog import CatalogError, load_catalog
from tests.conftest import make_settings


def _load(tmp_path: Path, toml: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "catalog.toml"
    path.write_text(toml, "utf-8")
    return load_catalog(make_settings(tmp_path, catalog=path))


def test_the_built_in_catalog_holds_the_directory(tmp_path: Path) -> None:
    catalog = load_catalog(make_settings(tmp_path))
    assert {"gpt-4o", "claude-4.7", "nano-banana-pro", "vo3", "helyx-3.5"} <= set(catalog.models)
    assert catalog.models["nano-banana-pro"].rate == Decimal(200)


def test_a_file_extends_field_by_field_or_replaces(tmp_path: Path) -> None:
    extended = _load(tmp_path, '[models.vo3]\nrate = "3000"\n[models.mine]\nkind = "chat"\nrate = 0.5\n'
                               'provider = "openai"\n')
    assert (extended.models["vo3"].rate, extended.models["vo3"].kind) == (Decimal(3000), "video")
    assert "gpt-4o" in extended.models and extended.models["mine"].upstream_model == "mine"
    replaced = _load(tmp_path, 'mode = "replace"\n[providers.p]\nkind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
                               '[models.only]\nkind = "chat"\nrate = 1\nprovider = "p"\n')
    assert set(replaced.models) == {"only"}


@pytest.mark.parametrize(("toml", "message"), [
    ('[models.vo3]\nraet = "3000"\n', "model vo3: unknown field raet (known: name, description, kind, rate"),
    ('mode = "merge"\n', "mode must be one of extend, replace, not 'merge'"),
    ('mode = "replace"\n', 'mode = "replace" with no [models.*]: the catalog would be empty'),
    ('[modles.vo3]\nrate = 1\n', "the file: unknown field modles"),
    ('[providers.openai]\nbase_url = "not a url"\n', "provider openai: base_url 'not a url' is not an http(s) URL"),
    ('[providers.openai]\ntimeout = 5\n', "provider openai: unknown field timeout"),
    ('[models.gpt-4o]\nrate = "1000.000001"\n', "model gpt-4o: rate must be at most 1,000 credits per token"),
    ('[models.vo3]\nrate = "1000000001"\n', "model vo3: rate must be at most 1,000,000,000 credits per video"),
    ('[models.vo3]\nunsupported_params = ["seed"]\n', "model vo3: unsupported_params must be a list of temperature"),
    ('[models.vo3]\nunsupported_params = "stop"\n', "model vo3: unsupported_params must be a list of temperature"),
    ('[models.vo3]\nunsupported_params = [["stop"]]\n', "model vo3: unsupported_params must be a list of"),
    ('[models.vo3]\nfixed_params = { stop = 1 }\n', "model vo3: fixed_params must be a table of temperature, top_p"),
    ('[models.vo3]\nfixed_params = { temperature = "1" }\n', "model vo3: fixed_params must be a table of"),
])
def test_a_mistake_is_refused_with_a_message_naming_it(tmp_path: Path, toml: str, message: str) -> None:
    with pytest.raises(CatalogError) as refused:
        _load(tmp_path, toml)
    assert str(refused.value).startswith(message), refused.value


def test_a_providers_own_options_are_accepted(tmp_path: Path) -> None:
    catalog = _load(tmp_path, '[providers.veo]\npoll_interval = 2.5\nmax_wait = 600\n'
                              '[providers.gemini]\ntimeout = 300.0\n')  # gemini's for image models
    assert catalog.providers["veo"].extra == {"poll_interval": 2.5, "max_wait": 600}
    assert catalog.providers["gemini"].extra == {"timeout": 300.0}
