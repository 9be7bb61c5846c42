"""Which adapter serves a catalog model: the real one when its provider has a key, otherwise
the simulated one when simulation is on (the catalog has already refused offline models)."""

from __future__ import annotations

from typing import Any

from common.catalog import Catalog, ModelEntry
from common.catalog_options import ADAPTER_OPTIONS
from common.providers.anthropic import AnthropicProvider
from common.providers.base import ChatProvider, ImageProvider, ProviderConfig, VideoProvider
from common.providers.gemini import GeminiChatProvider
from common.providers.gemini_image import GeminiImageProvider
from common.providers.http import UpstreamClient
from common.providers.openai_compat import OpenAICompatProvider
from common.providers.simulated import SimulatedChatProvider
from common.providers.stand_in import SimulatedStandIn
from common.providers.veo import EXPECTED_SECONDS as VEO_EXPECTED_SECONDS
from common.providers.veo import VeoVideoProvider
from common.settings import Settings

_CHAT = {"openai": OpenAICompatProvider, "anthropic": AnthropicProvider, "gemini": GeminiChatProvider}
_IMAGE = {"gemini": GeminiImageProvider}
_VIDEO = {"veo": VeoVideoProvider}


class Providers:
    """Adapters built on first use and kept; all share one pooled HTTP client."""

    def __init__(self, catalog: Catalog, settings: Settings, http: UpstreamClient) -> None:
        self._catalog = catalog
        self._settings = settings
        self._http = http
        self._cache: dict[tuple[str, str], Any] = {}

    def is_simulated(self, entry: ModelEntry) -> bool:
        return not self._catalog.is_configured(entry, self._settings) or self._provider_kind(entry) == "simulated"

    def chat(self, entry: ModelEntry) -> ChatProvider:
        return self._get("chat", entry, _CHAT, lambda: self._simulated_chat(entry))

    def _simulated_chat(self, entry: ModelEntry) -> ChatProvider:
        """The simulated model; standing in for a vendor's, it refuses what that vendor refuses."""
        delay = self._settings.simulated_chat_delay
        config = self._catalog.provider_for(entry)
        if config.kind not in _CHAT:  # a `simulated` provider
            return SimulatedChatProvider(delay)
        return SimulatedStandIn(self._adapter("chat", config, _CHAT, None), delay)

    def image(self, entry: ModelEntry) -> ImageProvider:
        return self._get("image", entry, _IMAGE, lambda: _simulated_media().SimulatedImageProvider(
            self._settings.simulated_job_seconds))

    def video(self, entry: ModelEntry) -> VideoProvider:
        return self._get("video", entry, _VIDEO, lambda: _simulated_media().SimulatedVideoProvider(
            self._settings.simulated_job_seconds))

    def expected_seconds(self, entry: ModelEntry) -> float:
        """About how long a video of this model takes (no adapter built: PyAV stays out of the API)."""
        if self.is_simulated(entry):
            return self._settings.simulated_job_seconds
        value = self._catalog.provider_for(entry).extra.get("expected_seconds", VEO_EXPECTED_SECONDS)
        return float(value)

    def _provider_kind(self, entry: ModelEntry) -> str:
        return self._catalog.provider_for(entry).kind

    def _get(self, role: str, entry: ModelEntry, classes: dict[str, Any], simulated: Any) -> Any:
        key = (role, entry.provider)
        if key not in self._cache:
            config = self._catalog.provider_for(entry)
            if self.is_simulated(entry):
                self._cache[key] = simulated()
            elif config.kind not in classes:
                raise ValueError(f"provider {config.name} ({config.kind}) cannot serve {role} models")
            else:
                self._cache[key] = self._adapter(role, config, classes, self._settings.provider_secret(
                    config.api_key_env))
        return self._cache[key]

    def _adapter(self, role: str, config: ProviderConfig, classes: dict[str, Any], secret: str | None) -> Any:
        options = ADAPTER_OPTIONS.get((config.kind, role), {})  # gemini's timeout is its image adapter's
        extra = {name: value for name, value in config.extra.items() if name in options}
        return classes[config.kind](self._http, config.base_url, secret, **extra)


def _simulated_media() -> Any:
    """Imported on first use: PyAV costs ~17 MB, and API processes of the production shape never
    render media."""
    from common.providers import simulated_media

    return simulated_media
