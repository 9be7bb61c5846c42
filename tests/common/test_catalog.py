"""HELYX_CATALOG: extends or replaces the built-in catalog; a mistake in it stops the start-up
with a message naming it, never a silent default (a misspelt `rate` must not leave the old price)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from common.catalog import CatalogError, load_catalog
from common.providers.base import SAMPLING_FIELDS
from common.providers.gemini import GeminiChatProvider
from common.providers.gemini_image import GeminiImageProvider
from common.providers.openai_compat import OpenAICompatProvider
from common.providers.registry import Providers
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
    # a model its provider's adapters cannot serve started, then failed every call with a 500
    ('[models.mine]\nkind = "chat"\nrate = 1\nprovider = "veo"\n',
     "model mine: a chat model, but provider veo (veo) serves video models only"),
    ('[models.pic]\nkind = "image"\nrate = 1\nprovider = "openai"\n',
     "model pic: an image model, but provider openai (openai) serves chat models only"),
    # wrong types started, then broke /models (api_key_env) or were sent upstream as they were
    ('[providers.openai]\napi_key_env = 5\n', "provider openai: api_key_env 5 is not an environment variable"),
    ('[providers.openai]\napi_key_env = "MY KEY"\n', "provider openai: api_key_env 'MY KEY' is not"),
    ('[providers.openai]\nbase_url = 5\n', "provider openai: base_url 5 is not an http(s) URL"),
    ('[models.gpt-4o]\nname = 5\n', "model gpt-4o: name must be a non-empty string"),
    ('[models.gpt-4o]\nupstream_model = 7\n', "model gpt-4o: upstream_model must be a non-empty string"),
    ('[providers.veo]\npoll_interval = "fast"\n', "provider veo: poll_interval must be a number of seconds"),
    ('[providers.veo]\nmax_wait = -5\n', "provider veo: max_wait must be a number of seconds above 0"),
    ('[providers.veo]\ndurations = "x"\n', "provider veo: durations must be a non-empty list of whole seconds"),
    ('[providers.veo]\npoll_retries = 1.5\n', "provider veo: poll_retries must be a whole number"),
    ('[providers.gemini]\ntimeout = "soon"\n', "provider gemini: timeout must be a number of seconds"),
    ('[providers.mistral]\nunsent_fields = ["tools"]\n', "provider mistral: unsent_fields must be a list among user, "
     "stream_options, name"),
    ('[providers.mistral]\nunsent_fields = "user"\n', "provider mistral: unsent_fields must be a list among"),
    ('[providers.anthropic]\nunsent_fields = ["user"]\n', "provider anthropic: unknown field unsent_fields"),
    # a traceback instead of one line
    ('[models.gpt-4o]\nrate = inf\n', "model gpt-4o: rate inf is not a credit amount (a number of credits with"),
    ('[models.gpt-4o]\nrate = "Infinity"\n', "model gpt-4o: rate 'Infinity' is not a credit amount"),
    ('[models.gpt-4o]\nrate = true\n', "model gpt-4o: rate True is not a credit amount"),
    ('[models.gpt-4o]\nrate = "1_000"\n', "model gpt-4o: rate '1_000' is not a credit amount"),  # a typo's price
    ('[models.gpt-4o]\nrate = "1e3"\n', "model gpt-4o: rate '1e3' is not a credit amount"),
    ('[models.gpt-4o]\nrate = "0.0000001"\n', "model gpt-4o: rate '0.0000001' is not a credit amount (a number"),
    ("models = 5\n", "models must be tables"),
    ("[models]\nfoo = 5\n", "models must be tables"),
    # values a request could not send, or fields that mean nothing for the model
    ('[models."kimi-k2.6"]\nfixed_params = { temperature = 5 }\n',
     "model kimi-k2.6: fixed_params.temperature must be from 0 to 2"),
    ('[models.gpt-4o]\nfixed_params = { top_p = -1 }\n', "model gpt-4o: fixed_params.top_p must be from 0 to 1"),
    ('[models.vo3]\nunsupported_params = ["stop"]\n', "model vo3: unsupported_params and fixed_params are for chat"),
    # the hold's bound for an image part, and a model's narrower temperature range
    ('[models.gpt-4o]\nimage_tokens = 0\n', "model gpt-4o: image_tokens must be a whole number from 1 to 10,000"),
    ('[models.gpt-4o]\nimage_tokens = 10001\n', "model gpt-4o: image_tokens must be a whole number from 1 to"),
    ('[models.gpt-4o]\nimage_tokens = "4800"\n', "model gpt-4o: image_tokens must be a whole number"),
    ('[models.gpt-4o]\nimage_tokens = true\n', "model gpt-4o: image_tokens must be a whole number"),
    ('[models.gpt-4o]\ntemperature_range = [1, 0.5]\n', "model gpt-4o: temperature_range must be [lowest, highest],"
     " from 0 to 2"),
    ('[models.gpt-4o]\ntemperature_range = [0, 3]\n', "model gpt-4o: temperature_range must be [lowest, highest]"),
    ('[models.gpt-4o]\ntemperature_range = [0.5]\n', "model gpt-4o: temperature_range must be [lowest, highest]"),
    ('[models.gpt-4o]\ntemperature_range = "0-1"\n', "model gpt-4o: temperature_range must be [lowest, highest]"),
    ('[models.vo3]\nimage_tokens = 100\n', "model vo3: image_tokens, temperature_range, vision and "
     "final_assistant_turn are for chat models"),
    ('[models.vo3]\nvision = false\n', "model vo3: image_tokens, temperature_range, vision and "
     "final_assistant_turn are for chat models"),
    ('[models.vo3]\nfinal_assistant_turn = false\n', "model vo3: image_tokens, temperature_range, vision and "
     "final_assistant_turn are for chat models"),
    ('[models.gpt-4o]\nvision = "no"\n', "model gpt-4o: vision must be true or false"),
    ('[models.gpt-4o]\nfinal_assistant_turn = 0\n', "model gpt-4o: final_assistant_turn must be true or false"),
    # a model no request could name (a review: they started, listed as available, and every call was a 400)
    ('[models.""]\nkind = "chat"\nrate = 1\nprovider = "openai"\n', "model '': an id must be 1 to 200 characters"),
    (f'[models.{"m" * 201}]\nkind = "chat"\nrate = 1\nprovider = "openai"\n', f"model '{'m' * 201}': an id must"),
    ('[models."a\\u0000b"]\nkind = "chat"\nrate = 1\nprovider = "openai"\n', "model 'a\\x00b': an id must be"),
    ('[models."a\\tb"]\nkind = "chat"\nrate = 1\nprovider = "openai"\n', "model 'a\\tb': an id must be 1 to"),
    ('[models.mine]\nkind = "chat"\nprovider = "openai"\n', "model mine: missing rate"),  # was "rate None is not..."
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


def test_gemini_image_options_reach_only_its_image_adapter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`timeout` (for image models) was passed to the Gemini chat adapter too: every chat a 500."""
    catalog = _load(tmp_path, '[providers.gemini]\ntimeout = 60\n')
    monkeypatch.setenv("GEMINI_API_KEY", "sk-test")
    providers = Providers(catalog, make_settings(tmp_path, simulate="0"), http=None)  # type: ignore[arg-type]
    assert isinstance(providers.chat(catalog.models["gemini-1-5-pro"]), GeminiChatProvider)
    image = providers.image(catalog.models["nano-banana-pro"])
    assert isinstance(image, GeminiImageProvider) and image._timeout == 60


def test_the_built_in_mistral_provider_leaves_out_what_mistral_refuses(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    catalog = _load(tmp_path, "")
    monkeypatch.setenv("MISTRAL_API_KEY", "sk-test")
    providers = Providers(catalog, make_settings(tmp_path, simulate="0"), http=None)  # type: ignore[arg-type]
    adapter = providers.chat(catalog.models["mixtral-8x22b"])
    assert isinstance(adapter, OpenAICompatProvider)
    assert (adapter._optional, adapter._ask_usage, adapter._drop_names) == (SAMPLING_FIELDS, False, True)


def test_the_built_in_groq_and_perplexity_providers_send_what_those_vendors_take(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Groq answers 400 to a message's name; Perplexity to turns that do not alternate."""
    catalog = _load(tmp_path, "")
    monkeypatch.setenv("GROQ_API_KEY", "sk-test")
    monkeypatch.setenv("PERPLEXITY_API_KEY", "sk-test")
    providers = Providers(catalog, make_settings(tmp_path, simulate="0"), http=None)  # type: ignore[arg-type]
    groq = providers.chat(catalog.models["helyx-3.5"])
    perplexity = providers.chat(catalog.models["perplexity-sonar"])
    assert isinstance(groq, OpenAICompatProvider) and isinstance(perplexity, OpenAICompatProvider)
    assert (groq._drop_names, groq._ask_usage, groq._alternate) == (True, True, False)
    assert (perplexity._drop_names, perplexity._alternate) == (False, True)


def test_the_built_in_openai_and_qwen_providers_send_the_limit_as_max_completion_tokens(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenAI's reasoning models refuse max_tokens, and Qwen's compatible mode retired it; the
    other vendors keep the name they document."""
    catalog = _load(tmp_path, "")
    for env in ("OPENAI_API_KEY", "DASHSCOPE_API_KEY", "GROQ_API_KEY"):
        monkeypatch.setenv(env, "sk-test")
    providers = Providers(catalog, make_settings(tmp_path, simulate="0"), http=None)  # type: ignore[arg-type]
    fields = {model: providers.chat(catalog.models[model])._limit_field  # type: ignore[union-attr]
              for model in ("gpt-4o", "qwen-3.6-plus", "helyx-3.5")}
    assert fields == {"gpt-4o": "max_completion_tokens", "qwen-3.6-plus": "max_completion_tokens",
                      "helyx-3.5": "max_tokens"}


def test_a_provider_pointed_at_another_server_sends_max_tokens_unless_told_otherwise(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The built-in openai's max_completion_tokens carried over to the README's own proxy example:
    a server that ignores that name (Ollama, llama-cpp-python) then produced without bound (a diff
    review). The same server named again, or the option set again, keeps it."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")

    def field(toml: str) -> str:
        catalog = _load(tmp_path, toml)
        providers = Providers(catalog, make_settings(tmp_path, simulate="0"), http=None)  # type: ignore[arg-type]
        return providers.chat(catalog.models["gpt-4o"])._limit_field  # type: ignore[union-attr,no-any-return]

    assert field('[providers.openai]\nbase_url = "https://my-proxy.example.com/v1"\n') == "max_tokens"
    assert field('[providers.openai]\nbase_url = "https://api.openai.com/v1"\n') == "max_completion_tokens"
    assert field('[providers.openai]\nbase_url = "https://API.openai.com/v1/"\n') == "max_completion_tokens"
    assert field('[providers.openai]\nbase_url = "https://my-proxy.example.com/v1"\n'
                 'limit_field = "max_completion_tokens"\n') == "max_completion_tokens"
    assert field('[models.gpt-4o]\nrate = "0.3"\n') == "max_completion_tokens"


def test_limit_field_must_name_one_of_the_two_limits(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="provider openai: limit_field must be 'max_tokens' or"):
        _load(tmp_path, '[providers.openai]\nlimit_field = "max_output_tokens"\n')


def test_the_built_in_minimax_provider_asks_for_its_thinking_apart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without `reasoning_split` MiniMax's M2 models put their thinking in the answer's content, in
    <think> tags (a wire review against MiniMax's OpenAI-compatible API page); pointed at another
    server, the provider starts without it, as without limit_field."""
    monkeypatch.setenv("MINIMAX_API_KEY", "sk-test")

    def extra(toml: str) -> dict[str, object]:
        catalog = _load(tmp_path, toml)
        providers = Providers(catalog, make_settings(tmp_path, simulate="0"), http=None)  # type: ignore[arg-type]
        return providers.chat(catalog.models["minimax-m2.7"])._extra_body  # type: ignore[union-attr,no-any-return]

    assert extra("") == {"reasoning_split": True}
    assert extra('[providers.minimax]\nbase_url = "https://my-proxy.example.com/v1"\n') == {}
    assert extra('[providers.minimax]\nextra_body = { reasoning_split = false, top_k = 40 }\n') == {
        "reasoning_split": False, "top_k": 40}


def test_a_built_in_provider_made_another_kind_starts_without_its_vendor_options(tmp_path: Path) -> None:
    """A review: `kind = "simulated"` kept the inherited extra_body (or limit_field), and the
    start stopped on a field the file never wrote."""
    for provider in ("minimax", "openai", "qwen"):
        catalog = _load(tmp_path, f'[providers.{provider}]\nkind = "simulated"\n')
        assert catalog.providers[provider].kind == "simulated"


@pytest.mark.parametrize("kind", ["anthropic", "gemini", "simulated"])
def test_every_built_in_openai_provider_made_another_kind_drops_every_option_of_its_own(
        tmp_path: Path, kind: str) -> None:
    """A review: perplexity's alternate_turns and mistral's and groq's unsent_fields stayed, and the
    start stopped on "unknown field alternate_turns", a field the file never wrote."""
    built_in = _load(tmp_path, "")
    for name, provider in built_in.providers.items():
        if provider.kind != "openai":
            continue
        changed = _load(tmp_path, f'[providers.{name}]\nkind = "{kind}"\n').providers[name]
        assert (changed.kind, changed.extra, changed.base_url, changed.api_key_env) == (
            kind, {}, provider.base_url, provider.api_key_env), name
    assert built_in.providers["perplexity"].extra["alternate_turns"] is True  # (there was something to drop)
    assert built_in.providers["mistral"].extra["unsent_fields"]


def test_a_built_in_provider_given_its_own_kind_again_keeps_its_options(tmp_path: Path) -> None:
    catalog = _load(tmp_path, '[providers.perplexity]\nkind = "openai"\n')
    assert catalog.providers["perplexity"].extra == _load(tmp_path, "").providers["perplexity"].extra


@pytest.mark.parametrize("value", ['{ max_tokens = 10 }', '{ temperature = 0.5 }', '{ stream = false }',
                                   '{ model = "x" }', '{ n = 5 }', '{ tools = [] }', '{ when = 2026-01-01 }',
                                   '{ x = inf }', '{ x = { y = [nan] } }', '"reasoning_split"', '[1]'])
def test_extra_body_may_not_set_what_helyx_sends_nor_hold_a_non_json_value(tmp_path: Path, value: str) -> None:
    with pytest.raises(CatalogError, match="provider minimax: extra_body must be a table of JSON values naming none"):
        _load(tmp_path, f'[providers.minimax]\nextra_body = {value}\n')


def test_alternate_turns_must_be_a_boolean(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="provider perplexity: alternate_turns must be true or false"):
        _load(tmp_path, '[providers.perplexity]\nalternate_turns = "yes"\n')


def test_a_model_on_the_built_in_simulated_provider_says_it_is_simulated(tmp_path: Path) -> None:
    catalog = _load(tmp_path, '[models.sim]\nkind = "chat"\nrate = 1\nprovider = "simulated"\n')
    settings = make_settings(tmp_path, simulate="0")
    assert catalog.is_simulated(catalog.models["sim"], settings)
    assert not catalog.is_simulated(catalog.models["gpt-4o"], settings)



@pytest.mark.parametrize("content", ['[models.gpt-4o]\ndescription = "caf\xe9"\n'.encode("latin-1"),
                                     '[models.gpt-4o]\nrate = "0.3"\n'.encode("utf-16")])
def test_a_catalog_file_that_is_not_utf8_is_one_line(tmp_path: Path, content: bytes) -> None:
    """A Latin-1 or UTF-16 file stopped the start with a UnicodeDecodeError traceback."""
    path = tmp_path / "catalog.toml"
    path.write_bytes(content)
    with pytest.raises(CatalogError) as refused:
        load_catalog(make_settings(tmp_path, catalog=path))
    assert str(refused.value).startswith(f"HELYX_CATALOG {path}: "), refused.value
