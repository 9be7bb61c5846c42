"""Fake upstream providers on 127.0.0.1, speaking each vendor's wire format (see upstream.py)."""

from tests.fakes.upstream import Behaviour, FakeUpstream, Recorded

__all__ = ["Behaviour", "FakeUpstream", "Recorded"]
