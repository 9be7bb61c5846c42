"""The official OpenAI SDK against the running gateway (simulated provider): answers, streams,
the model directory, and each error as the SDK's own exception, with the books exact after each."""

from __future__ import annotations

from decimal import Decimal

import openai
import pytest

from common import keys
from common.money import MICRO
from common.tokens import estimate_prompt_tokens
from tests.api.chat.helpers import Gateway, GatewayFactory, assert_books_balance, books, hold_for, leave_available
from tests.conftest import TestAccount

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a ledger?"}]
RATE_MICRO = {"gpt-4o": 200_000, "helyx-3.5": 40_000, "claude-4.7": 1_000_000}  # credits/token × 10⁶


def micro(credits: float | int) -> int:
    """A credits number from a response, exactly in micro-credits (it has at most 6 decimals)."""
    value = Decimal(str(credits)) * MICRO
    assert value == value.to_integral_value(), credits
    return int(value)


def assert_nothing_moved(gateway: Gateway, account: TestAccount, before: object) -> None:
    after = assert_books_balance(gateway.engine, account.account_id)
    assert after == before  # no entry written, no hold left open, balance untouched


# --- answers -------------------------------------------------------------------------------------


def test_a_completion_through_the_sdk_is_charged_prompt_plus_completion_times_rate(gateway: Gateway) -> None:
    account = gateway.account()
    before = books(gateway.engine, account.account_id)
    with gateway.sdk(account) as client:
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
        completion = raw.parse()
        credits = gateway.http(account).get("/credits").json()

    assert completion.object == "chat.completion"
    assert completion.model == "gpt-4o"
    assert completion.system_fingerprint == "helyx-simulated"
    assert completion.choices[0].message.role == "assistant"
    assert "What is a ledger?" in completion.choices[0].message.content
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert raw.headers["x-ratelimit-limit-requests"] == "10000"
    assert raw.headers["x-request-id"]

    charge = usage.total_tokens * RATE_MICRO["gpt-4o"]
    helyx = completion.model_extra["helyx"]
    assert micro(helyx["credits_charged"]) == charge
    after = assert_books_balance(gateway.engine, account.account_id)
    assert before.balance - after.balance == charge
    assert after.entries == before.entries + 2  # reserve, settle
    assert micro(helyx["credits_remaining"]) == after.available == micro(credits["remaining"])
    hold = hold_for(gateway.engine, completion.id)
    assert hold["status"] == "settled" and hold["charged"] == charge <= hold["amount"]
    assert helyx["generation_id"] == completion.id


def test_a_stream_with_include_usage_ends_with_a_usage_chunk_and_is_charged_exactly(gateway: Gateway) -> None:
    account = gateway.account()
    before = books(gateway.engine, account.account_id)
    with gateway.sdk(account) as client:
        plain = client.chat.completions.create(model="helyx-3.5", messages=MESSAGES)
        mid = books(gateway.engine, account.account_id)
        stream = client.chat.completions.create(model="helyx-3.5", messages=MESSAGES, stream=True,
                                                stream_options={"include_usage": True})
        chunks = list(stream)  # ends cleanly at data: [DONE]

    assert len(chunks) >= 4
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content  # the simulated model is deterministic
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.model_dump() == plain.usage.model_dump() | {
        "completion_tokens_details": None, "prompt_tokens_details": None}
    assert all(c.usage is None for c in chunks[:-1])

    charge = last.usage.total_tokens * RATE_MICRO["helyx-3.5"]
    assert micro(last.model_extra["helyx"]["credits_charged"]) == charge
    after = assert_books_balance(gateway.engine, account.account_id)
    assert mid.balance - after.balance == charge
    assert before.balance - mid.balance == charge
    assert micro(last.model_extra["helyx"]["credits_remaining"]) == after.available


# --- the directory -------------------------------------------------------------------------------

DIRECTORY = {  # SPEC §6: id -> (kind, credits, min_plan)
    "gpt-4-turbo": ("chat", Decimal("0.2"), "free"), "claude-4.7": ("chat", Decimal("1.0"), "plus"),
    "perplexity-sonar": ("chat", Decimal("0.1"), "free"), "helyx-3.5": ("chat", Decimal("0.04"), "free"),
    "grok-pro": ("chat", Decimal("0.2"), "plus"), "kimi-k2.6": ("chat", Decimal("0.2"), "free"),
    "qwen-3.6-plus": ("chat", Decimal("0.2"), "free"), "glm-5.1-pro": ("chat", Decimal("0.2"), "free"),
    "minimax-m2.7": ("chat", Decimal("0.1"), "free"), "nano-banana-pro": ("image", Decimal("200"), "free"),
    "vo3": ("video", None, "plus"),
}
QUICK_START = ("gpt-4o", "claude-3-5-sonnet", "llama-3-70b", "gemini-1-5-pro", "mixtral-8x22b")
UNITS = {"chat": "token", "image": "image", "video": "video"}


def test_models_list_holds_the_whole_directory_and_the_quick_start_names(gateway: Gateway) -> None:
    with gateway.sdk(gateway.account()) as client:
        models = {m.id: m for m in client.models.list()}

    assert set(DIRECTORY) | set(QUICK_START) <= set(models)
    for model_id, (kind, credits, min_plan) in DIRECTORY.items():
        model = models[model_id]
        extra = model.model_extra
        assert model.object == "model" and model.owned_by and isinstance(model.created, int)
        assert extra["kind"] == kind and extra["min_plan"] == min_plan, model_id
        assert extra["pricing"]["unit"] == UNITS[kind]
        if credits is not None:
            assert Decimal(str(extra["pricing"]["credits"])) == credits, model_id
        assert extra["available"] is True  # simulation is on in the self-contained mode
        assert extra["name"] and extra["description"]
    for model_id in QUICK_START:
        assert models[model_id].model_extra["kind"] == "chat"


def test_models_retrieve_gives_one_model_and_an_unknown_one_is_not_found(gateway: Gateway) -> None:
    with gateway.sdk(gateway.account()) as client:
        model = client.models.retrieve("claude-4.7")
        with pytest.raises(openai.NotFoundError) as caught:
            client.models.retrieve("no-such-model")

    assert model.id == "claude-4.7" and model.object == "model" and model.owned_by == "anthropic"
    assert model.model_extra["min_plan"] == "plus"
    assert model.model_extra["pricing"] == {"unit": "token", "credits": 1}
    assert caught.value.code == "model_not_found"


# --- errors, each as the SDK's exception, and nothing moved -------------------------------------


def test_an_unknown_key_and_a_revoked_key_raise_authentication_error(gateway: Gateway) -> None:
    account = gateway.account()
    with gateway.http(account) as http:
        second = http.post("/keys", json={"name": "second"}).json()
        assert http.delete(f"/keys/{second['id']}").status_code == 200
    before = assert_books_balance(gateway.engine, account.account_id)

    for key, code in ((keys.generate_key(), "invalid_api_key"), (second["key"], "revoked_api_key")):
        with gateway.sdk(key) as client, pytest.raises(openai.AuthenticationError) as caught:
            client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        assert caught.value.status_code == 401
        assert caught.value.type == "authentication_error" and caught.value.code == code
        assert caught.value.response.headers["x-should-retry"] == "false"
    assert_nothing_moved(gateway, account, before)


def test_a_plus_model_on_a_free_key_raises_permission_denied(gateway: Gateway) -> None:
    account = gateway.account("free")
    before = assert_books_balance(gateway.engine, account.account_id)
    with gateway.sdk(account) as client, pytest.raises(openai.PermissionDeniedError) as caught:
        client.chat.completions.create(model="claude-4.7", messages=MESSAGES)
    assert caught.value.type == "permission_error" and caught.value.param == "model"
    assert "Plus" in caught.value.message
    assert_nothing_moved(gateway, account, before)

    with gateway.sdk(gateway.account("plus")) as client:  # the same model on Plus goes through
        assert client.chat.completions.create(model="claude-4.7", messages=MESSAGES).usage.total_tokens > 0


def test_an_unknown_model_raises_not_found_with_code_model_not_found(gateway: Gateway) -> None:
    account = gateway.account()
    before = assert_books_balance(gateway.engine, account.account_id)
    with gateway.sdk(account) as client, pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-17", messages=MESSAGES)
    assert caught.value.code == "model_not_found" and caught.value.param == "model"
    assert_nothing_moved(gateway, account, before)


def test_a_model_without_provider_key_and_without_simulation_is_temporarily_offline(
    make_gateway: GatewayFactory,
) -> None:
    gateway = make_gateway(simulate="0")
    account = gateway.account()
    before = assert_books_balance(gateway.engine, account.account_id)
    with gateway.sdk(account) as client:
        with pytest.raises(openai.NotFoundError) as caught:
            client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        listed = {m.id: m.model_extra["available"] for m in client.models.list()}
    assert "temporarily offline" in caught.value.message
    assert caught.value.code == "model_offline"
    assert listed["gpt-4o"] is False
    assert_nothing_moved(gateway, account, before)


def test_the_third_request_over_a_limit_of_two_raises_rate_limit_error(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(rate_limit_free=2)
    account = gateway.account()
    with gateway.sdk(account) as client:
        first = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
        second = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
        before = assert_books_balance(gateway.engine, account.account_id)
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="gpt-4o", messages=MESSAGES)

    assert [first.headers["x-ratelimit-remaining-requests"], second.headers["x-ratelimit-remaining-requests"]] \
        == ["1", "0"]
    headers = caught.value.response.headers
    assert caught.value.status_code == 429 and caught.value.type == "rate_limit_error"
    assert 1 <= int(headers["retry-after"]) <= 60
    assert headers["x-ratelimit-limit-requests"] == "2"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert 0 < float(headers["x-ratelimit-reset-requests"].removesuffix("s")) <= 60
    assert "x-should-retry" not in headers  # a retry after Retry-After can succeed
    assert_nothing_moved(gateway, account, before)


@pytest.mark.parametrize(("kwargs", "param"), [
    ({"temperature": 3}, "temperature"),
    ({"messages": openai.omit}, "messages"),
    ({"n": 2}, "n"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "top_p": 1.5}, "top_p"),
])
def test_an_invalid_request_raises_bad_request_naming_the_parameter(
    gateway: Gateway, kwargs: dict[str, object], param: str,
) -> None:
    account = gateway.account()
    before = assert_books_balance(gateway.engine, account.account_id)
    with gateway.sdk(account) as client, pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**{"model": "gpt-4o", "messages": MESSAGES, **kwargs})
    assert caught.value.type == "invalid_request_error"
    assert caught.value.param == param
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert_nothing_moved(gateway, account, before)


def test_an_explicit_max_tokens_the_balance_cannot_cover_is_402_saying_what_it_affords(gateway: Gateway) -> None:
    account = gateway.account()
    prompt = estimate_prompt_tokens(MESSAGES)
    affordable = 300
    leave_available(gateway.engine, account.account_id, (prompt + affordable) * RATE_MICRO["gpt-4o"] + 199_999)
    before = assert_books_balance(gateway.engine, account.account_id)

    with gateway.sdk(account) as client, pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=1000)
    assert caught.value.status_code == 402
    assert caught.value.type == "insufficient_quota" and caught.value.param == "max_tokens"
    assert f"max_tokens={affordable}" in caught.value.message
    assert "resets at" in caught.value.message
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert_nothing_moved(gateway, account, before)

    with gateway.sdk(account) as client:  # exactly what it said it affords goes through
        ok = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=affordable)
    assert ok.usage.total_tokens > 0
    assert_books_balance(gateway.engine, account.account_id)
