"""DN normalisation: every line of the upstream vectors, plus the documented examples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bamboo.auth.dn import bare_dn, clean_user_id, is_limited_proxy_dn

# A copy of reference/vectors/dn-normalisation.jsonl: the forms the upstream server computes.
VECTORS_FILE = Path(__file__).with_name("dn-normalisation.jsonl")
VECTORS = [json.loads(line) for line in VECTORS_FILE.read_text().splitlines() if line.strip()]


def test_all_forty_vectors_are_present() -> None:
    assert len(VECTORS) == 40


@pytest.mark.parametrize("vector", VECTORS, ids=[v["dn"] or "<empty>" for v in VECTORS])
def test_vector(vector: dict[str, str]) -> None:
    dn = vector["dn"]
    assert clean_user_id(dn) == vector["compact_user_name"]
    assert bare_dn(dn, keep_proxy=True) == vector["bare_dn_keep_proxy"]
    assert bare_dn(dn) == vector["bare_dn"]
    assert bare_dn(dn, keep_digits=False) == vector["bare_dn_no_digits"]


@pytest.mark.parametrize(
    ("dn", "expected"),
    [
        ("/DC=ch/DC=cern/OU=Users/CN=jdoe/CN=123456/CN=John Doe", "John Doe"),
        ("John Doe/CN=nickname:jdoe", "John Doe"),
        ("/O=Bamboo/CN=Alice Example/CN=proxy/CN=proxy", "Alice Example"),
        ("/CN=Bob_42", "Bob"),
        ("/CN=Bob 42 Jr", "Bob Jr"),
        ("/CN=Ann (Lab)/Email=ann@example.org", "Ann Lab"),
        ("/CN=Robot: Pilot/CN=pilotx", "pilotx"),
        ("/CN=first/CN=second/CN=third/CN=99", "third"),
        ("/CN=x y@z.org w", "x w"),
    ],
)
def test_examples_and_edge_cases(dn: str, expected: str) -> None:
    assert clean_user_id(dn) == expected


def test_limited_proxy_detection() -> None:
    assert is_limited_proxy_dn("/CN=a/CN=proxy/CN=limited proxy")
    assert not is_limited_proxy_dn("/CN=a/CN=proxy")


_components = st.lists(
    st.tuples(
        st.sampled_from(["DC", "O", "OU", "C", "L", "CN"]),
        st.text("abcXYZ 0123_-.'()@", min_size=1, max_size=12),
    ),
    max_size=6,
)


@given(_components)
def test_clean_user_id_is_total_and_drops_organisation(components: list[tuple[str, str]]) -> None:
    dn = "".join(f"/{key}={value.replace('/', '')}" for key, value in components)
    name = clean_user_id(dn)
    assert "/DC=" not in name and "/OU=" not in name and "/O=" not in name
    assert "(" not in name and ")" not in name and "'" not in name


@given(st.text("abc/=CNproxylimited 019", max_size=60))
def test_bare_dn_forms_are_idempotent(dn: str) -> None:
    once = bare_dn(dn)
    assert bare_dn(once) == once
    kept = bare_dn(dn, keep_proxy=True)
    assert bare_dn(kept, keep_proxy=True) == kept
    assert not once.endswith("/CN=proxy")
