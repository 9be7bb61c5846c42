"""`hx-` keys: shape, randomness, a checksum that refuses typos, and authentication that refuses a
malformed key without a single database query."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine

from common import accounts, keys
from common.errors import AuthenticationFailed
from tests.conftest import TestAccount, statements_sent

KEY_SHAPE = re.compile(r"^hx-[0-9A-Za-z]{46}$")
NOW = 1_773_100_000.0


def test_generated_keys_are_well_formed_and_random() -> None:
    generated = [keys.generate_key() for _ in range(200)]
    for key in generated:
        assert KEY_SHAPE.match(key), key
        assert keys.is_well_formed(key)
        assert len(key) - len("hx-") - keys.CHECK_LEN >= 40  # at least 40 random characters
    assert len(set(generated)) == len(generated)
    # every alphabet character turns up in the random part: not a narrow or biased alphabet
    bodies = "".join(k[3 : 3 + keys.BODY_LEN] for k in generated)
    assert set(bodies) == set(keys.ALPHABET)


def test_display_prefix_is_short_and_not_the_secret() -> None:
    key = keys.generate_key()
    prefix = keys.display_prefix(key)
    assert key.startswith(prefix) and prefix.startswith("hx-")
    assert len(prefix) <= 12


def test_hash_is_sha256_hex_and_differs_from_the_key() -> None:
    key = keys.generate_key()
    digest = keys.hash_key(key)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert key[3:] not in digest
    assert keys.hash_key(key) == digest and keys.hash_key(keys.generate_key()) != digest


# fixed, not generated: the parametrized ids below must be the same in every pytest-xdist worker
SAMPLE_BODY = "Helyx0123456789SampleKeyForTestsOnly0000"
SAMPLE = "hx-" + SAMPLE_BODY + keys._checksum(SAMPLE_BODY)


def single_character_typos(key: str) -> Iterator[str]:
    for i, original in enumerate(key):
        for replacement in keys.ALPHABET + "-_":
            if replacement != original:
                yield key[:i] + replacement + key[i + 1 :]


def test_the_checksum_catches_every_single_character_typo() -> None:
    typos = list(single_character_typos(SAMPLE))
    assert len(typos) > 3000
    accepted = [t for t in typos if keys.is_well_formed(t)]
    assert accepted == []


def test_the_checksum_catches_swapped_neighbours_dropped_and_doubled_characters() -> None:
    body = SAMPLE[3:]
    swaps = [SAMPLE[:3] + body[:i] + body[i + 1] + body[i] + body[i + 2 :] for i in range(len(body) - 1)
             if body[i] != body[i + 1]]
    dropped = [SAMPLE[:i] + SAMPLE[i + 1 :] for i in range(len(SAMPLE))]
    doubled = [SAMPLE[:i] + SAMPLE[i] + SAMPLE[i:] for i in range(len(SAMPLE))]
    assert not any(keys.is_well_formed(k) for k in swaps + dropped + doubled)


@pytest.mark.parametrize(
    "presented",
    [
        "",
        "hx-",
        "sk-" + SAMPLE[3:],  # an OpenAI-style prefix
        "HX-" + SAMPLE[3:],
        "hx_" + SAMPLE[3:],
        SAMPLE[:-1],  # too short
        SAMPLE + "A",  # too long
        " " + SAMPLE,
        SAMPLE + "\n",
        SAMPLE[:10] + "é" + SAMPLE[11:],  # same length, outside the alphabet
        "hx-" + "A" * 46,
    ],
)
def test_wrong_prefix_length_or_alphabet_is_refused(presented: str) -> None:
    assert not keys.is_well_formed(presented)


class ExplodingEngine:
    """Stands in for an engine: any attempt to reach the database fails the test."""

    def connect(self) -> Any:
        raise AssertionError("authenticate touched the database")

    begin = connect


@pytest.mark.parametrize("presented", [None, "", "hx-short", SAMPLE[:-1] + ("A" if SAMPLE[-1] != "A" else "B"),
                                       "Bearer " + SAMPLE, "sk-" + SAMPLE[3:]])
def test_authenticate_refuses_malformed_keys_without_touching_the_database(presented: str | None) -> None:
    with pytest.raises(AuthenticationFailed) as caught:
        accounts.authenticate(ExplodingEngine(), presented, now=NOW)  # type: ignore[arg-type]
    assert caught.value.status == 401


@pytest.fixture
def statements(engine: Engine) -> Iterator[list[str]]:
    with statements_sent(engine) as seen:
        yield seen


def test_malformed_keys_run_no_query_while_well_formed_ones_do(
    engine: Engine, account: TestAccount, statements: list[str]
) -> None:
    typo = account.api_key[:20] + ("a" if account.api_key[20] != "a" else "b") + account.api_key[21:]
    with pytest.raises(AuthenticationFailed):
        accounts.authenticate(engine, typo, now=NOW)
    assert statements == []

    with pytest.raises(AuthenticationFailed) as unknown:
        accounts.authenticate(engine, keys.generate_key(), now=NOW)  # well formed, but no such key
    assert unknown.value.code == "invalid_api_key"
    lookups = [s for s in statements if "FROM api_keys" in s]
    assert len(lookups) == 1  # the counter works: a well-formed key is looked up, once

    principal = accounts.authenticate(engine, account.api_key, now=NOW)
    assert (principal.account_id, principal.key_id, principal.plan) == (account.account_id, account.key_id, "free")
    assert principal.key_prefix == keys.display_prefix(account.api_key)
    assert len([s for s in statements if "FROM api_keys" in s]) == 2


def test_only_the_hash_and_the_display_prefix_are_stored(engine: Engine, account: TestAccount) -> None:
    with engine.connect() as conn:
        row = conn.exec_driver_sql("SELECT * FROM api_keys WHERE id = ?", (account.key_id,)).one()
    stored = " ".join(str(v) for v in row)
    assert account.api_key not in stored
    assert account.api_key[3:] not in stored
    assert keys.hash_key(account.api_key) in stored
    assert keys.display_prefix(account.api_key) in stored
