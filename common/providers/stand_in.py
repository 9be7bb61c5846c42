"""The simulated model standing in for a vendor's (simulation on and no key for it, as in the
demo): it answers, but what the vendor's adapter refuses before anything is held (tools for a
vendor without them, a JSON format for Anthropic, call arguments Claude or Gemini cannot take) is
refused here too, so the demo says 400 where production would."""

from __future__ import annotations

from typing import Any

from common.providers.base import ChatProvider
from common.providers.simulated import SimulatedChatProvider


class SimulatedStandIn(SimulatedChatProvider):
    def __init__(self, vendor: ChatProvider, delay: float = 0.0) -> None:
        super().__init__(delay)
        self._vendor = vendor  # built without a key: its checks make no call
        self.json_output = vendor.json_output

    def refuse_unsendable(self, messages: list[dict[str, Any]], stop: list[str] | None = None,
                          tools: list[dict[str, Any]] | None = None) -> None:
        self._vendor.refuse_unsendable(messages, stop, tools)
