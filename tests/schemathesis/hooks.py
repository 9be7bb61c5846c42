"""Loaded by Schemathesis (SCHEMATHESIS_HOOKS=tests.schemathesis.hooks).

Works around a CPython 3.11.7 parser bug ("SystemError: AST constructor recursion depth
mismatch", fixed in later 3.11 releases): Hypothesis parses source to describe a lambda when it
prints a recursive strategy, and deep in a draw that parse can hit the bug. A description is only
cosmetic, so a generic one is used when the parser fails. Nothing about the API under test changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis.internal import lambda_sources

_describe: Callable[[Any], str] = lambda_sources.lambda_description


def _safe_description(f: Any) -> str:
    try:
        return _describe(f)
    except SystemError:
        return "lambda: <unknown>"


lambda_sources.lambda_description = _safe_description
