"""The model catalog: which models exist, what they cost, who may use them, who serves them.

The built-in `catalog.toml` ships with the package; `HELYX_CATALOG` names a TOML file that
extends it field by field (`mode = "extend"`, the default) or replaces it (`mode = "replace"`).
Rates are Decimal credits (per token for chat, per image, per video) and become exact integers
of micro-credits here, once.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from common.catalog_merge import merge
from common.catalog_options import ADAPTER_OPTIONS, PROVIDER_FIELDS, PROVIDER_KINDS, PROVIDER_OPTIONS
from common.errors import InvalidRequest, ModelNotFound, PermissionDenied
from common.money import PLAIN_DECIMAL, to_micro
from common.plans import PLANS, plan_allows
from common.providers.base import SAMPLING_FIELDS, ProviderConfig
from common.providers.messages import image_parts, role_of
from common.settings import Settings
from common.tokens import TOKENS_PER_IMAGE

KINDS = ("chat", "image", "video")
UNITS = {"chat": "token", "image": "image", "video": "video"}
# The largest hold must fit a BIGINT of micro-credits (9.2e18): a chat prompt's estimate can reach
# ~2e8 tokens (a 4 MiB body of image links at 1,600 each; ~1e9 at MAX_IMAGE_TOKENS); a media job is
# at most 4 units.
MAX_RATE = {"chat": Decimal(1000), "image": Decimal(10**9), "video": Decimal(10**9)}
MODES = ("extend", "replace")
MODEL_FIELDS = ("name", "description", "kind", "rate", "min_plan", "provider", "upstream_model", "unsupported_params",
                "fixed_params", "image_tokens", "temperature_range", "vision", "final_assistant_turn")
# The sampling fields a chat model's upstream may refuse or fix itself (catalog: unsupported_params, fixed_params).
WITHHOLDABLE = SAMPLING_FIELDS
FIXABLE = ("temperature", "top_p")
# The kinds of model each provider kind's adapters serve (common.providers.registry).
SERVES: dict[str, tuple[str, ...]] = {"openai": ("chat",), "anthropic": ("chat",), "gemini": ("chat", "image"),
                                      "veo": ("video",), "simulated": KINDS}


FIXED_RANGES = {"temperature": (0.0, 2.0), "top_p": (0.0, 1.0)}  # as a request may set them
MAX_IMAGE_TOKENS = 10_000  # with MAX_RATE, a prompt of image links (~45 bytes each) still fits a BIGINT hold
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_MODEL_ID_CHARS = 200  # what a request's `model` may hold (api.schemas)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class CatalogError(ValueError):
    """The catalog file is malformed; the message says where."""


@dataclass(frozen=True, slots=True)
class ModelEntry:
    id: str
    name: str
    description: str
    kind: str
    rate: Decimal  # credits per unit
    rate_micro: int  # micro-credits per unit
    min_plan: str
    provider: str
    upstream_model: str
    # Chat fields the upstream refuses, and those it fixes itself (with their values): never sent.
    unsupported_params: tuple[str, ...] = ()
    fixed_params: tuple[tuple[str, float], ...] = ()
    # The most prompt tokens one image part can cost upstream (the hold's bound for it).
    image_tokens: int = TOKENS_PER_IMAGE
    # The temperatures the upstream takes, when narrower than a request's 0 to 2: sent clamped into it.
    temperature_range: tuple[float, float] | None = None
    vision: bool = True  # whether the upstream model takes image parts (False: a 400 of ours before the hold)
    # Whether the upstream takes a conversation whose last turn is the assistant's (a prefill, to
    # Anthropic); False: a 400 of ours before the hold, where the vendor's 400 came after it as a 502.
    final_assistant_turn: bool = True

    withheld: frozenset[str] = field(init=False)  # both, never sent

    def __post_init__(self) -> None:
        object.__setattr__(self, "withheld",
                           frozenset(self.unsupported_params) | {name for name, _ in self.fixed_params})

    def refuse_unsupported(self, given: Callable[[], Mapping[str, Any]]) -> None:
        """A 400 of ours naming a field the caller set (`given()`: their names and values) that
        this model's upstream refuses, rather than the upstream's error after a hold, or a silent
        drop. A value that asks for nothing passes: an empty `stop`, a zero penalty, a temperature
        or top_p of 1 (OpenAI's defaults), a fixed field's own value."""
        if not self.withheld:
            return
        fixed, fields = dict(self.fixed_params), given()
        for name in self.withheld & fields.keys():
            value = fields[name]
            if name in fixed:
                if value not in (fixed[name], 1):  # its own value, or OpenAI's default, asks for nothing
                    raise InvalidRequest(f"The model '{self.id}' takes only {name} = {fixed[name]:g} (its provider "
                                         "fixes it); leave it out.", param=name, code="unsupported_parameter")
            elif not ((name == "stop" and not value) or (name.endswith("_penalty") and value == 0)
                      or (name in FIXABLE and value == 1)):  # temperature or top_p 1: OpenAI's defaults
                raise InvalidRequest(f"The model '{self.id}' does not support '{name}'; leave it out.",
                                     param=name, code="unsupported_parameter")

    def refuse_images(self, messages: list[dict[str, Any]]) -> None:
        """A 400 of ours naming the first image part, for a model whose upstream takes none (its
        vendor's refusal would come after the hold, as a 502 unless it names the part)."""
        if self.vision:
            return
        first = next(image_parts(messages), None)
        if first is not None:
            raise InvalidRequest(f"The model '{self.id}' does not take images; send text only, or choose a "
                                 "model that takes images.", param=first[0], code="images_not_supported")

    def refuse_final_assistant_turn(self, messages: list[dict[str, Any]]) -> None:
        """A 400 of ours for a conversation that ends with an assistant turn (system messages
        aside), for a model whose upstream refuses one (Anthropic's Claude 4.6 and later, Mistral,
        Perplexity): OpenAI answers it, so clients send one (a trimmed history, a "continue")."""
        if self.final_assistant_turn:
            return
        last = next((index for index in range(len(messages) - 1, -1, -1)
                     if role_of(messages[index]) != "system"), None)
        if last is not None and role_of(messages[last]) == "assistant":
            raise InvalidRequest(f"The model '{self.id}' does not take a conversation that ends with an assistant "
                                 "turn (its provider refuses one); end it with a user turn.",
                                 param=f"messages.{last}", code="final_assistant_turn_not_supported")

    def upstream_temperature(self, temperature: float | None) -> float | None:
        """The temperature to send: none when withheld, else the request's clamped into the model's range."""
        if temperature is None or "temperature" in self.withheld:
            return None
        if self.temperature_range is None:
            return temperature
        low, high = self.temperature_range
        return min(max(temperature, low), high)

    def upstream_stop(self, stop: list[str] | None) -> list[str] | None:
        """The stop sequences to send: none when withheld."""
        return None if "stop" in self.withheld else stop

    @property
    def unit(self) -> str:
        return UNITS[self.kind]


@dataclass(frozen=True)
class Catalog:
    models: dict[str, ModelEntry]
    providers: dict[str, ProviderConfig]

    def get(self, model_id: str) -> ModelEntry:
        entry = self.models.get(model_id)
        if entry is None:
            raise ModelNotFound(f"The model '{model_id}' does not exist.", param="model")
        return entry

    def image_tokens_for(self, model_id: str) -> int:
        """The model's bound for one image part of a prompt (the default for an unknown model, which
        is refused later, in the usual order)."""
        entry = self.models.get(model_id)
        return TOKENS_PER_IMAGE if entry is None else entry.image_tokens

    def replays_reasoning(self, model_id: str) -> bool:
        """Whether the model's vendor reads an earlier turn's `reasoning_content` (an `openai`
        provider's `replay_reasoning`): the hold's prompt bound counts it then."""
        entry = self.models.get(model_id)
        return entry is not None and self.providers[entry.provider].extra.get("replay_reasoning") is True

    def provider_for(self, entry: ModelEntry) -> ProviderConfig:
        return self.providers[entry.provider]

    def is_configured(self, entry: ModelEntry, settings: Settings) -> bool:
        """A real upstream can be called: the provider is simulated or its key is set."""
        provider = self.provider_for(entry)
        return provider.kind == "simulated" or settings.provider_secret(provider.api_key_env) is not None

    def is_available(self, entry: ModelEntry, settings: Settings) -> bool:
        return settings.simulation_on or self.is_configured(entry, settings)

    def is_simulated(self, entry: ModelEntry, settings: Settings) -> bool:
        """Answered by the simulated provider: the built-in one, or, with simulation on, any whose key is unset."""
        provider = self.provider_for(entry)
        return provider.kind == "simulated" or (
            settings.simulation_on and settings.provider_secret(provider.api_key_env) is None)

    def resolve(self, model_id: str, plan: str, settings: Settings, kind: str | None = None) -> ModelEntry:
        """The entry for a request: exists, of the right kind, available, and allowed for the plan."""
        entry = self.usable(model_id, settings, kind)
        if not plan_allows(plan, entry.min_plan):
            raise PermissionDenied(
                f"The model '{model_id}' needs the {entry.min_plan.capitalize()} plan or higher; "
                f"this account is on {plan.capitalize()}.", param="model",
            )
        return entry

    def usable(self, model_id: str, settings: Settings, kind: str | None = None) -> ModelEntry:
        """`resolve` but for the plan: the entry exists, is of the right kind and is available."""
        entry = self.get(model_id)
        if kind is not None and entry.kind != kind:
            raise ModelNotFound(
                f"The model '{model_id}' is {'an' if entry.kind[:1] in 'aeiou' else 'a'} {entry.kind} model"
                " and cannot be used here.",
                param="model", code="model_not_supported",
            )
        if not self.is_available(entry, settings):
            raise ModelNotFound(
                f"The model '{model_id}' is temporarily offline.", param="model", code="model_offline"
            )
        return entry

    @staticmethod
    def plans_for(entry: ModelEntry) -> tuple[str, ...]:
        """The plans that may use the model."""
        return tuple(plan for plan in PLANS if plan_allows(plan, entry.min_plan))


def load_catalog(settings: Settings) -> Catalog:
    raw = _read_builtin()
    if settings.catalog is not None:
        raw = merge(raw, _read_file(settings.catalog))
    return build(raw)


def _read_builtin() -> dict[str, Any]:
    return tomllib.loads(resources.files("common").joinpath("catalog.toml").read_text("utf-8"))


def _read_file(path: Path) -> dict[str, Any]:
    try:
        raw = tomllib.loads(Path(path).read_text("utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:  # TOML is UTF-8, without a BOM
        raise CatalogError(f"HELYX_CATALOG {path}: {exc}") from exc
    _unknown("the file", raw, ("mode", "models", "providers"))
    for section in ("models", "providers"):
        tables = raw.get(section, {})
        if not isinstance(tables, dict) or not all(isinstance(fields, dict) for fields in tables.values()):
            raise CatalogError(f"{section} must be tables ([{section}.NAME] with its fields)")
    if raw.get("mode", "extend") not in MODES:
        raise CatalogError(f"mode must be one of {', '.join(MODES)}, not {raw['mode']!r}")
    if raw.get("mode") == "replace" and not raw.get("models"):
        raise CatalogError('mode = "replace" with no [models.*]: the catalog would be empty')
    return raw


def _unknown(where: str, fields: dict[str, Any], known: tuple[str, ...]) -> None:
    """A misspelt field is an error, not a silent default: `raet = 3000` must not leave the old price."""
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise CatalogError(f"{where}: unknown field{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}"
                           f" (known: {', '.join(known)})")


def build(raw: dict[str, Any]) -> Catalog:
    providers = {name: _provider(name, fields) for name, fields in raw.get("providers", {}).items()}
    providers.setdefault("simulated", ProviderConfig(name="simulated", kind="simulated"))
    models = {model_id: _model(model_id, fields, providers) for model_id, fields in raw.get("models", {}).items()}
    return Catalog(models=models, providers=providers)


def _provider(name: str, fields: dict[str, Any]) -> ProviderConfig:
    kind = fields.get("kind")
    if kind not in PROVIDER_KINDS:
        raise CatalogError(f"provider {name}: kind must be one of {', '.join(PROVIDER_KINDS)}")
    _unknown(f"provider {name}", fields, PROVIDER_FIELDS + PROVIDER_OPTIONS.get(kind, ()))
    base_url = fields.get("base_url", "")
    parsed = urlsplit(base_url) if isinstance(base_url, str) else None
    if kind != "simulated" and (parsed is None or parsed.scheme not in ("http", "https") or not parsed.hostname):
        raise CatalogError(f"provider {name}: base_url {base_url!r} is not an http(s) URL")
    api_key_env = fields.get("api_key_env")
    if api_key_env is not None and not (isinstance(api_key_env, str) and _ENV_NAME.fullmatch(api_key_env)):
        raise CatalogError(f"provider {name}: api_key_env {api_key_env!r} is not an environment variable's name")
    extra = {k: v for k, v in fields.items() if k not in PROVIDER_FIELDS}
    for (provider_kind, _), options in ADAPTER_OPTIONS.items():
        for option, (check, wanted) in options.items():
            if provider_kind == kind and option in extra and not check(extra[option]):
                raise CatalogError(f"provider {name}: {option} must be {wanted}, not {extra[option]!r}")
    return ProviderConfig(name=name, kind=kind, base_url=str(fields.get("base_url", "")).rstrip("/"),
                          api_key_env=fields.get("api_key_env"), extra=extra)


def _model(model_id: str, fields: dict[str, Any], providers: dict[str, ProviderConfig]) -> ModelEntry:
    def need(field: str) -> Any:
        if field not in fields:
            raise CatalogError(f"model {model_id}: missing {field}")
        return fields[field]

    if not 0 < len(model_id) <= MAX_MODEL_ID_CHARS or _CONTROL.search(model_id):
        raise CatalogError(f"model {model_id!r}: an id must be 1 to {MAX_MODEL_ID_CHARS} characters, without "
                           "control characters (no request could name it)")
    _unknown(f"model {model_id}", fields, MODEL_FIELDS)
    kind, min_plan, provider = need("kind"), fields.get("min_plan", "free"), need("provider")
    if kind not in KINDS:
        raise CatalogError(f"model {model_id}: kind must be one of {', '.join(KINDS)}")
    if min_plan not in PLANS:
        raise CatalogError(f"model {model_id}: min_plan must be one of {', '.join(PLANS)}")
    if provider not in providers:
        raise CatalogError(f"model {model_id}: unknown provider {provider}")
    served = SERVES[providers[provider].kind]
    if kind not in served:
        article = "an" if kind == "image" else "a"
        raise CatalogError(f"model {model_id}: {article} {kind} model, but provider {provider} "
                           f"({providers[provider].kind}) serves {' and '.join(served)} models only")
    for text_field in ("name", "description", "upstream_model"):
        if text_field in fields and not (isinstance(fields[text_field], str) and fields[text_field].strip()):
            raise CatalogError(f"model {model_id}: {text_field} must be a non-empty string")
    raw_rate = need("rate")
    try:
        if isinstance(raw_rate, bool) or not isinstance(raw_rate, str | int | float):
            raise ValueError(raw_rate)
        if isinstance(raw_rate, str) and not PLAIN_DECIMAL.fullmatch(raw_rate.strip()):  # "1_000", "1e3": typos
            raise ValueError(raw_rate)
        rate = Decimal(str(raw_rate))
        if not rate.is_finite():
            raise ValueError(raw_rate)
        rate_micro = to_micro(rate)
    except (InvalidOperation, ValueError) as exc:
        raise CatalogError(f"model {model_id}: rate {fields.get('rate')!r} is not a credit amount (a number of"
                           " credits with at most 6 decimals)") from exc
    if rate_micro <= 0:
        raise CatalogError(f"model {model_id}: rate must be positive")
    if rate > MAX_RATE[kind]:  # a hold of (prompt + max_tokens) x rate must fit the BIGINT micro-credit columns
        raise CatalogError(f"model {model_id}: rate must be at most {MAX_RATE[kind]:,} credits per {UNITS[kind]}")
    return ModelEntry(
        id=model_id, name=fields.get("name", model_id), description=fields.get("description", ""), kind=kind,
        rate=rate, rate_micro=rate_micro, min_plan=min_plan, provider=provider,
        upstream_model=fields.get("upstream_model", model_id), **_sampling_limits(model_id, fields),
        **_prompt_and_range(model_id, fields),
    )


def _sampling_limits(model_id: str, fields: dict[str, Any]) -> dict[str, Any]:
    unsupported, fixed = fields.get("unsupported_params", []), fields.get("fixed_params", {})
    if not isinstance(unsupported, list) or not all(isinstance(n, str) and n in WITHHOLDABLE for n in unsupported):
        raise CatalogError(f"model {model_id}: unsupported_params must be a list of {', '.join(WITHHOLDABLE)}")
    if not isinstance(fixed, dict) or not all(name in FIXABLE and isinstance(value, int | float)
                                              and not isinstance(value, bool) for name, value in fixed.items()):
        raise CatalogError(f"model {model_id}: fixed_params must be a table of {', '.join(FIXABLE)} = a number")
    for name, value in fixed.items():
        low, high = FIXED_RANGES[name]
        if not low <= value <= high:
            raise CatalogError(f"model {model_id}: fixed_params.{name} must be from {low:g} to {high:g},"
                               " as in a request")
    if (unsupported or fixed) and fields.get("kind") != "chat":
        raise CatalogError(f"model {model_id}: unsupported_params and fixed_params are for chat models only")
    return {"unsupported_params": tuple(unsupported), "fixed_params": tuple((n, float(v)) for n, v in fixed.items())}


def _prompt_and_range(model_id: str, fields: dict[str, Any]) -> dict[str, Any]:
    """A chat model's `image_tokens`, `temperature_range`, `vision` and `final_assistant_turn`, checked."""
    chosen: dict[str, Any] = {}
    for flag in ("vision", "final_assistant_turn"):
        if flag in fields:
            if not isinstance(fields[flag], bool):
                raise CatalogError(f"model {model_id}: {flag} must be true or false")
            chosen[flag] = fields[flag]
    if "image_tokens" in fields:
        value = fields["image_tokens"]
        if not (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_IMAGE_TOKENS):
            raise CatalogError(f"model {model_id}: image_tokens must be a whole number from 1 to {MAX_IMAGE_TOKENS:,}")
        chosen["image_tokens"] = value
    if "temperature_range" in fields:
        value, (low, high) = fields["temperature_range"], FIXED_RANGES["temperature"]
        if not (isinstance(value, list) and len(value) == 2
                and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
                and low <= value[0] <= value[1] <= high):
            raise CatalogError(f"model {model_id}: temperature_range must be [lowest, highest],"
                               f" from {low:g} to {high:g}")
        chosen["temperature_range"] = (float(value[0]), float(value[1]))
    if chosen and fields.get("kind") != "chat":
        raise CatalogError(f"model {model_id}: image_tokens, temperature_range, vision and final_assistant_turn are "
                           "for chat models only")
    return chosen
