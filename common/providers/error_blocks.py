"""Blocks around an upstream call whose exceptions leave them as UpstreamError: transport errors
(`upstream_errors`) and a 2xx answer of a shape the vendor's protocol does not have
(`malformed_answers`). Lower-case names: used like functions, `with upstream_errors("openai"):`."""

from __future__ import annotations

from types import TracebackType
from typing import Literal

import httpx

from common.errors import UpstreamError
from common.providers.http import transport_error


class _TranslatedErrors:
    """A block whose exceptions of some kinds leave it as UpstreamError (`translate`)."""

    def __init__(self, provider: str) -> None:
        self.provider = provider

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> Literal[False]:
        translated = self.translate(exc) if exc is not None else None
        if translated is not None:
            raise translated from exc
        return False

    def translate(self, exc: BaseException) -> UpstreamError | None:
        raise NotImplementedError


class upstream_errors(_TranslatedErrors):
    """Turns httpx transport exceptions raised inside the block into UpstreamError."""

    def translate(self, exc: BaseException) -> UpstreamError | None:
        return transport_error(exc, self.provider) if isinstance(exc, httpx.HTTPError) else None


class malformed_answers(_TranslatedErrors):
    """Turns the errors of reading a vendor's 2xx answer of an unexpected shape (a list where an
    object belongs, a number where text does, a value nested too deep to re-serialise) into a 502
    `upstream_bad_response`, not retried: the
    call was made and paid for. They were 500s, which the SDK retries: three calls for one."""

    def translate(self, exc: BaseException) -> UpstreamError | None:
        if isinstance(exc, AttributeError | TypeError | KeyError | IndexError | ValueError | RecursionError):
            return UpstreamError(f"The upstream provider ({self.provider}) sent an answer of an unexpected shape",
                                 code="upstream_bad_response")
        return None
