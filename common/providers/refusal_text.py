"""Whose a provider's refusal is: the request's (its text may reach the client) or the operator's
provider account's (its text, which may name the organisation, project or billing account, is for
the operator's log only)."""

from __future__ import annotations

import re

# Words of a refusal about the operator's provider account rather than the request: its text
# (which may name the organisation or project) is for the operator's log, not the client.
_ABOUT_THE_ACCOUNT = re.compile(r"credit|billing|balance|quota|payment|subscription|organi[sz]ation|\bproject\b"
                                r"|\borg-|\bproj_|spend(ing)? limit|usage limit|plan\b", re.IGNORECASE)


def about_the_request(status: int, vendor: str) -> bool:
    """Whether a non-retryable refusal's text is about the request (the client may read it): a
    400 or 422 that does not speak of the operator's account. A 402 (payment), a 404 (a model
    name the catalog has wrong) and the rest are the operator's."""
    return status in (400, 422) and not _ABOUT_THE_ACCOUNT.search(vendor)
