"""Tests of the embedded OIDC issuer and of bearer-token verification (clients.md §6)."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bamboo.auth.identity import AuthMethod, has_production_role
from bamboo.auth.local_issuer import KEY_FILE_NAME, LOCAL_CLIENT_ID, LocalIssuer
from bamboo.auth.oidc import (
    MAX_TOKEN_CHARS,
    DiscoveryKeys,
    StaticKeys,
    TokenRejected,
    TokenVerifier,
    VOPolicy,
    load_policies_from_dir,
    split_vo_role,
)

ISSUER_URL = "http://127.0.0.1:25080/"
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


class FakeClock:
    """A settable wall clock for the verifier."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class FakeMonotonic:
    """A settable monotonic clock for DiscoveryKeys."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bamboo-home")


@pytest.fixture(scope="module")
def issuer(home: Path) -> LocalIssuer:
    return LocalIssuer.load_or_create(home, ISSUER_URL)


@pytest.fixture(scope="module")
def signing_key(home: Path, issuer: LocalIssuer) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key((home / KEY_FILE_NAME).read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def verifier(issuer: LocalIssuer, clock: FakeClock) -> TokenVerifier:
    return TokenVerifier({"bamboo": issuer.policy()}, {"bamboo": issuer.key_source()}, clock=clock)


def user_claims(**overrides: object) -> dict[str, object]:
    now = int(T0.timestamp())
    claims: dict[str, object] = {
        "iss": ISSUER_URL,
        "aud": LOCAL_CLIENT_ID,
        "sub": "u-123",
        "name": "test user",
        "preferred_username": "testuser",
        "groups": ["bamboo"],
        "iat": now,
        "exp": now + 3600,
    }
    claims.update(overrides)
    return {key: value for key, value in claims.items() if value is not None}


def sign(claims: dict[str, object], key: rsa.RSAPrivateKey, kid: str | None) -> str:
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(claims, key, algorithm="RS256", headers=headers)


async def rejected(verifier: TokenVerifier, token: str, origin: str | None) -> str:
    with pytest.raises(TokenRejected) as info:
        await verifier.verify(token, origin)
    reason = info.value.reason
    # Tokens too short to be mistaken for words must never be echoed back.
    assert len(token) < 16 or token not in reason
    return reason


# --- LocalIssuer -------------------------------------------------------------------------------


def test_key_file_is_private_and_reused(home: Path, issuer: LocalIssuer) -> None:
    mode = stat.S_IMODE((home / KEY_FILE_NAME).stat().st_mode)
    assert mode == 0o600
    again = LocalIssuer.load_or_create(home, ISSUER_URL)
    assert again.kid == issuer.kid
    assert len(issuer.kid) == 43  # base64url of a SHA-256 digest without padding


def test_kid_is_the_rfc7638_thumbprint(issuer: LocalIssuer) -> None:
    jwk = issuer.jwks()["keys"][0]
    canonical = json.dumps({"e": jwk["e"], "kty": "RSA", "n": jwk["n"]}, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).digest()
    assert issuer.kid == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert jwk == {"kty": "RSA", "kid": issuer.kid, "use": "sig", "alg": "RS256", "n": jwk["n"], "e": "AQAB"}


def test_issued_token_claims(issuer: LocalIssuer, signing_key: rsa.RSAPrivateKey) -> None:
    token = issuer.issue_token(user="Test User", vo="bamboo", role="production", now=T0)
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "RS256"
    assert header["kid"] == issuer.kid
    claims = jwt.decode(
        token,
        signing_key.public_key(),
        algorithms=["RS256"],
        audience=LOCAL_CLIENT_ID,
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )
    now = int(T0.timestamp())
    assert claims == {
        "iss": ISSUER_URL,
        "aud": "bamboo",
        "sub": "bamboo:Test User",
        "name": "Test User",
        "preferred_username": "testuser",
        "groups": ["bamboo", "bamboo/production"],
        "iat": now,
        "nbf": now,
        "exp": now + 86400,
    }


def test_extra_groups_are_appended(issuer: LocalIssuer) -> None:
    token = issuer.issue_token(user="u", vo="bamboo", groups=["bamboo", "other"])
    assert jwt.decode(token, options={"verify_signature": False})["groups"] == ["bamboo", "other"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"user": ""},
        {"user": "   "},
        {"user": "x" * 129},
        {"user": "bad\nname"},
        {"user": "u", "role": "admin"},
        {"user": "u", "lifetime": timedelta(0)},
        {"user": "u", "lifetime": timedelta(days=30, seconds=1)},
        {"user": "u", "vo": "has.dot"},
        {"user": "u", "vo": ""},
    ],
)
def test_issue_token_rejects_bad_arguments(issuer: LocalIssuer, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        issuer.issue_token(**kwargs)


def test_metadata_documents(home: Path) -> None:
    bare = LocalIssuer.load_or_create(home, "https://bamboo.example:8443")
    assert bare.discovery_document() == {
        "issuer": "https://bamboo.example:8443",
        "jwks_uri": "https://bamboo.example:8443/.well-known/jwks.json",
        "id_token_signing_alg_values_supported": ["RS256"],
    }
    assert bare.auth_config("myvo") == {
        "client_id": "bamboo",
        "audience": "bamboo",
        "client_secret": None,
        "oidc_config_url": "https://bamboo.example:8443/.well-known/openid-configuration",
        "vo": "myvo",
    }
    slashed = LocalIssuer.load_or_create(home, ISSUER_URL)
    assert slashed.discovery_document()["jwks_uri"] == "http://127.0.0.1:25080/.well-known/jwks.json"


# --- successful verification -------------------------------------------------------------------


async def test_user_token(issuer: LocalIssuer, verifier: TokenVerifier) -> None:
    token = issuer.issue_token(user="User Name", now=T0)
    identity = await verifier.verify(token, "bamboo")
    assert identity.dn == "User Name/CN=nickname:username"
    assert identity.user_name == "User Name"
    assert identity.method is AuthMethod.TOKEN
    assert identity.vo == "bamboo"
    assert identity.fqans == ()
    assert identity.claims["preferred_username"] == "username"
    assert not has_production_role(identity, [])


@pytest.mark.parametrize("origin", ["bamboo.production", "bamboo:production", " bamboo.production "])
async def test_production_token(issuer: LocalIssuer, verifier: TokenVerifier, origin: str) -> None:
    token = issuer.issue_token(user="harvester robot", role="production", now=T0)
    identity = await verifier.verify(token, origin)
    assert identity.fqans == ("/bamboo/Role=production",)
    assert has_production_role(identity, [])
    assert identity.dn == "Harvester Robot/CN=nickname:harvesterrobot"


async def test_production_token_with_bare_origin_has_no_role(
    issuer: LocalIssuer, verifier: TokenVerifier
) -> None:
    token = issuer.issue_token(user="harvester", role="production", now=T0)
    identity = await verifier.verify(token, "bamboo")
    assert not has_production_role(identity, [])


async def test_name_words_are_capitalised_and_sub_is_the_fallback(
    verifier: TokenVerifier, signing_key: rsa.RSAPrivateKey, issuer: LocalIssuer
) -> None:
    shouting = sign(user_claims(name="JANE  van DOE"), signing_key, issuer.kid)
    assert (await verifier.verify(shouting, "bamboo")).dn == "Jane Van Doe/CN=nickname:testuser"
    german = sign(user_claims(name="ßtraße", preferred_username=None), signing_key, issuer.kid)
    assert (await verifier.verify(german, "bamboo")).dn == "SStraße"
    nameless = sign(user_claims(name=None, preferred_username=None), signing_key, issuer.kid)
    assert (await verifier.verify(nameless, "bamboo")).dn == "u-123"


async def test_issuer_trailing_slash_is_tolerated(
    verifier: TokenVerifier, signing_key: rsa.RSAPrivateKey, issuer: LocalIssuer
) -> None:
    token = sign(user_claims(iss=ISSUER_URL.rstrip("/")), signing_key, issuer.kid)
    assert (await verifier.verify(token, "bamboo")).vo == "bamboo"


async def test_client_id_claim_selects_the_client(
    verifier: TokenVerifier, signing_key: rsa.RSAPrivateKey, issuer: LocalIssuer
) -> None:
    token = sign(user_claims(aud=["bamboo", "other"], client_id="bamboo"), signing_key, issuer.kid)
    assert (await verifier.verify(token, "bamboo")).vo == "bamboo"


async def test_scope_roles_become_fqans(
    verifier: TokenVerifier, signing_key: rsa.RSAPrivateKey, issuer: LocalIssuer
) -> None:
    claims = user_claims(groups=["bamboo", "bamboo/pilot"], scope="openid role:/bamboo/Role=pilot role:")
    identity = await verifier.verify(sign(claims, signing_key, issuer.kid), "bamboo.pilot")
    assert identity.fqans == ("/bamboo/Role=pilot",)


async def test_wlcg_profile_reads_wlcg_groups(
    issuer: LocalIssuer, signing_key: rsa.RSAPrivateKey, clock: FakeClock
) -> None:
    policy = VOPolicy(
        vo="bamboo", client_ids=("bamboo",), issuer=ISSUER_URL, jwks=issuer.jwks(), jwt_profile="wlcg"
    )
    verifier = TokenVerifier({"bamboo": policy}, clock=clock)
    token = sign(
        user_claims(groups=None, **{"wlcg.groups": ["/bamboo", "/bamboo/production"]}),
        signing_key,
        issuer.kid,
    )
    identity = await verifier.verify(token, "bamboo.production")
    assert identity.fqans == ("/bamboo/Role=production",)
    plain = sign(user_claims(groups=["bamboo", "bamboo/production"]), signing_key, issuer.kid)
    assert "Not a member of the bamboo/production group" in await rejected(
        verifier, plain, "bamboo.production"
    )


async def test_robot_without_groups_gets_the_origin_groups(
    issuer: LocalIssuer, signing_key: rsa.RSAPrivateKey, clock: FakeClock
) -> None:
    policy = VOPolicy(
        vo="bamboo",
        client_ids=("bamboo", "bamboo-robot"),
        issuer=ISSUER_URL,
        jwks=issuer.jwks(),
        robot_ids=("bamboo-robot",),
    )
    verifier = TokenVerifier({"bamboo": policy}, clock=clock)
    robot = sign(
        user_claims(aud="bamboo-robot", groups=None, name=None, preferred_username=None),
        signing_key,
        issuer.kid,
    )
    identity = await verifier.verify(robot, "bamboo.production")
    assert identity.fqans == ("/bamboo/Role=production",)
    assert identity.dn == "Robot Production"
    assert has_production_role(identity, [])
    assert (await verifier.verify(robot, "bamboo")).dn == "Robot"
    person = sign(user_claims(groups=None), signing_key, issuer.kid)
    assert "Not a member of the bamboo group" in await rejected(verifier, person, "bamboo")


async def test_auto_roles_apply_to_a_bare_vo_origin(
    issuer: LocalIssuer, signing_key: rsa.RSAPrivateKey, clock: FakeClock
) -> None:
    policy = VOPolicy(
        vo="bamboo", client_ids=("bamboo",), issuer=ISSUER_URL, jwks=issuer.jwks(), auto_roles=("pilot",)
    )
    verifier = TokenVerifier({"bamboo": policy}, clock=clock)
    pilot = sign(user_claims(groups=["/bamboo/pilot"]), signing_key, issuer.kid)
    assert (await verifier.verify(pilot, "bamboo")).fqans == ("/bamboo/Role=pilot",)
    user = sign(user_claims(groups=["/bamboo"]), signing_key, issuer.kid)
    assert (await verifier.verify(user, "bamboo")).fqans == ()


# --- rejections --------------------------------------------------------------------------------


async def test_expired_token(issuer: LocalIssuer, verifier: TokenVerifier) -> None:
    token = issuer.issue_token(user="u", now=T0 - timedelta(hours=2), lifetime=timedelta(hours=1))
    assert await rejected(verifier, token, "bamboo") == "Invalid token. Signature has expired"


async def test_leeway_accepts_slightly_expired_tokens(issuer: LocalIssuer, clock: FakeClock) -> None:
    lenient = TokenVerifier({"bamboo": issuer.policy()}, clock=clock, leeway_seconds=60)
    token = issuer.issue_token(user="u", now=T0 - timedelta(seconds=3630), lifetime=timedelta(hours=1))
    assert (await lenient.verify(token, "bamboo")).vo == "bamboo"


async def test_not_yet_valid_token(issuer: LocalIssuer, verifier: TokenVerifier) -> None:
    token = issuer.issue_token(user="u", now=T0 + timedelta(minutes=5))
    assert await rejected(verifier, token, "bamboo") == "Invalid token. The token is not yet valid (nbf)"


async def test_token_without_exp_is_rejected(
    verifier: TokenVerifier, signing_key: rsa.RSAPrivateKey, issuer: LocalIssuer
) -> None:
    token = sign(user_claims(exp=None), signing_key, issuer.kid)
    assert "exp" in await rejected(verifier, token, "bamboo")


async def test_forged_token(
    verifier: TokenVerifier, other_key: rsa.RSAPrivateKey, issuer: LocalIssuer
) -> None:
    token = sign(user_claims(), other_key, issuer.kid)
    assert await rejected(verifier, token, "bamboo") == "Invalid token. Signature verification failed"


async def test_wrong_audience(
    verifier: TokenVerifier, signing_key: rsa.RSAPrivateKey, issuer: LocalIssuer
) -> None:
    unknown = sign(user_claims(aud="somebody-else", sub="x"), signing_key, issuer.kid)
    assert await rejected(verifier, unknown, "bamboo") == "cannot extract client_id"
    mismatched = sign(user_claims(aud="somebody-else", client_id="bamboo"), signing_key, issuer.kid)
    assert await rejected(verifier, mismatched, "bamboo") == "Invalid token. Audience doesn't match"


async def test_unknown_issuer(
    verifier: TokenVerifier, signing_key: rsa.RSAPrivateKey, issuer: LocalIssuer
) -> None:
    token = sign(user_claims(iss="https://evil.example/"), signing_key, issuer.kid)
    assert await rejected(verifier, token, "bamboo") == "Invalid token. Invalid issuer"


async def test_missing_issuer(
    verifier: TokenVerifier, signing_key: rsa.RSAPrivateKey, issuer: LocalIssuer
) -> None:
    token = sign(user_claims(iss=None), signing_key, issuer.kid)
    assert await rejected(verifier, token, "bamboo") == "Issuer is undefined in the token"


async def test_alg_none_and_hmac_are_rejected(verifier: TokenVerifier, issuer: LocalIssuer) -> None:
    unsigned = jwt.encode(user_claims(), None, algorithm="none", headers={"kid": issuer.kid})
    hmac = jwt.encode(user_claims(), "s" * 64, algorithm="HS256", headers={"kid": issuer.kid})
    for token in (unsigned, hmac):
        assert "algorithm must be RS256" in await rejected(verifier, token, "bamboo")


async def test_missing_or_unknown_kid(verifier: TokenVerifier, signing_key: rsa.RSAPrivateKey) -> None:
    no_kid = sign(user_claims(), signing_key, None)
    assert "kid is missing" in await rejected(verifier, no_kid, "bamboo")
    unknown = sign(user_claims(), signing_key, "not-a-known-kid")
    assert "no signing key" in await rejected(verifier, unknown, "bamboo")


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "", "é.x.y"])
async def test_malformed_tokens(verifier: TokenVerifier, token: str) -> None:
    assert (await rejected(verifier, token, "bamboo")).startswith("Token decode failure.")


@pytest.mark.parametrize("origin", [None, "", "  "])
async def test_missing_origin(issuer: LocalIssuer, verifier: TokenVerifier, origin: str | None) -> None:
    token = issuer.issue_token(user="u", now=T0)
    assert "Origin header is missing" in await rejected(verifier, token, origin)


async def test_unknown_vo(issuer: LocalIssuer, verifier: TokenVerifier) -> None:
    token = issuer.issue_token(user="u", now=T0)
    assert await rejected(verifier, token, "atlas") == "Unknown vo : atlas"
    assert await rejected(verifier, token, "atlas.production") == "Unknown vo : atlas"
    assert "malformed Origin" in await rejected(verifier, token, "bamboo.")
    assert "malformed Origin" in await rejected(verifier, token, "x" * 300)


async def test_not_a_member(
    verifier: TokenVerifier, signing_key: rsa.RSAPrivateKey, issuer: LocalIssuer
) -> None:
    user = sign(user_claims(), signing_key, issuer.kid)
    assert (
        await rejected(verifier, user, "bamboo.production") == "Not a member of the bamboo/production group"
    )
    outsider = sign(user_claims(groups=["other", "bamboo-fans"]), signing_key, issuer.kid)
    assert await rejected(verifier, outsider, "bamboo") == "Not a member of the bamboo group"


async def test_client_of_another_vo_cannot_vouch(
    issuer: LocalIssuer, signing_key: rsa.RSAPrivateKey, clock: FakeClock
) -> None:
    other = VOPolicy(vo="atlas", client_ids=("atlas-client",), issuer=ISSUER_URL, jwks=issuer.jwks())
    verifier = TokenVerifier({"bamboo": issuer.policy(), "atlas": other}, clock=clock)
    token = sign(user_claims(groups=["atlas"]), signing_key, issuer.kid)
    assert "not registered for vo : atlas" in await rejected(verifier, token, "atlas")


async def test_oversize_token(verifier: TokenVerifier) -> None:
    reason = await rejected(verifier, "a" * (MAX_TOKEN_CHARS + 1), "bamboo")
    assert reason.startswith("Token decode failure.")


# --- verification cache ------------------------------------------------------------------------


def count_verifications(verifier: TokenVerifier, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    original = verifier._verified_claims

    async def counting(*args: object) -> object:
        calls[0] += 1
        return await original(*args)

    monkeypatch.setattr(verifier, "_verified_claims", counting)
    return calls


async def test_cache_hit_skips_verification(
    issuer: LocalIssuer, verifier: TokenVerifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_verifications(verifier, monkeypatch)
    token = issuer.issue_token(user="pilot", role="pilot", now=T0)
    first = await verifier.verify(token, "bamboo.pilot")
    second = await verifier.verify(token, "bamboo.pilot")
    assert second is first
    assert calls == [1]
    other_origin = await verifier.verify(token, "bamboo")
    assert other_origin.fqans == ()
    assert calls == [2]


async def test_cache_does_not_outlive_the_token(
    issuer: LocalIssuer, verifier: TokenVerifier, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_verifications(verifier, monkeypatch)
    token = issuer.issue_token(user="u", now=T0, lifetime=timedelta(seconds=60))
    await verifier.verify(token, "bamboo")
    clock.now = T0 + timedelta(seconds=59)
    await verifier.verify(token, "bamboo")
    assert calls == [1]
    clock.now = T0 + timedelta(seconds=61)
    assert await rejected(verifier, token, "bamboo") == "Invalid token. Signature has expired"


async def test_cache_entries_last_at_most_ten_minutes(
    issuer: LocalIssuer, verifier: TokenVerifier, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_verifications(verifier, monkeypatch)
    token = issuer.issue_token(user="u", now=T0)
    await verifier.verify(token, "bamboo")
    clock.now = T0 + timedelta(minutes=9)
    await verifier.verify(token, "bamboo")
    assert calls == [1]
    clock.now = T0 + timedelta(minutes=11)
    await verifier.verify(token, "bamboo")
    assert calls == [2]


async def test_cache_is_bounded(
    issuer: LocalIssuer, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    verifier = TokenVerifier({"bamboo": issuer.policy()}, clock=clock, cache_entries=2)
    calls = count_verifications(verifier, monkeypatch)
    tokens = [issuer.issue_token(user=f"user{i}", now=T0) for i in range(3)]
    for token in tokens:
        await verifier.verify(token, "bamboo")
    await verifier.verify(tokens[2], "bamboo")
    assert calls == [3]
    await verifier.verify(tokens[0], "bamboo")
    assert calls == [4]


# --- policies ----------------------------------------------------------------------------------


def test_split_vo_role() -> None:
    assert split_vo_role("atlas") == ("atlas", None)
    assert split_vo_role("atlas.production") == ("atlas", "production")
    assert split_vo_role("atlas:production") == ("atlas", "production")
    assert split_vo_role("a.b.pilot") == ("a.b", "pilot")
    assert split_vo_role("vo.example.org") == ("vo.example.org", None)
    assert split_vo_role("vo.example.org:pilot") == ("vo.example.org", "pilot")


def test_load_policies_from_dir(tmp_path: Path) -> None:
    base = {
        "client_id": "atlas-id",
        "oidc_config_url": "https://iam.example/.well-known/openid-configuration",
    }
    (tmp_path / "atlas_auth_config.json").write_text(
        json.dumps({**base, "secondary_ids": ["atlas-2"], "auto_roles": ["production"], "vo": "atlas"})
    )
    (tmp_path / "atlas.production_auth_config.json").write_text(
        json.dumps({**base, "robot_ids": "robot-1, robot-2", "jwt_profile": "wlcg"})
    )
    (tmp_path / "ignored.json").write_text("{}")
    policies = load_policies_from_dir(tmp_path)
    assert set(policies) == {"atlas", "atlas.production"}
    atlas = policies["atlas"]
    assert (atlas.vo, atlas.role, atlas.client_ids, atlas.auto_roles) == (
        "atlas",
        None,
        ("atlas-id", "atlas-2"),
        ("production",),
    )
    production = policies["atlas.production"]
    assert (production.vo, production.role) == ("atlas", "production")
    assert production.robot_ids == ("robot-1", "robot-2")
    assert production.groups_claim == "wlcg.groups"
    assert TokenVerifier(policies)  # both share one client id and provider


@pytest.mark.parametrize(
    "data",
    [
        {"oidc_config_url": "https://iam.example/"},
        {"client_id": 5, "oidc_config_url": "https://iam.example/"},
        {"client_id": "x"},
        {"client_id": "x", "oidc_config_url": "ftp://iam.example/"},
        {"client_id": "x", "oidc_config_url": "https://iam.example/", "robot_ids": [1]},
        {"client_id": "x", "jwks": {"keys": []}},
        {"client_id": "x", "jwks": [], "issuer": "https://iam.example/"},
        ["not", "an", "object"],
    ],
)
def test_invalid_auth_configs(data: object) -> None:
    with pytest.raises(ValueError):
        VOPolicy.from_auth_config("atlas", data)  # type: ignore[arg-type]


def test_auth_config_file_errors(tmp_path: Path) -> None:
    (tmp_path / "big_auth_config.json").write_bytes(b" " * (1024 * 1024 + 1))
    with pytest.raises(ValueError, match="larger than"):
        load_policies_from_dir(tmp_path)
    (tmp_path / "big_auth_config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"big_auth_config\.json"):
        load_policies_from_dir(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_policies_from_dir(tmp_path / "missing")


def test_conflicting_policies_are_refused(issuer: LocalIssuer) -> None:
    local = issuer.policy()
    elsewhere = VOPolicy(vo="other", client_ids=("bamboo",), oidc_config_url="https://iam.example/")
    with pytest.raises(ValueError, match="different identity providers"):
        TokenVerifier({"bamboo": local, "other": elsewhere})
    with pytest.raises(ValueError, match="duplicates"):
        TokenVerifier({"bamboo": local, "bamboo-again": local})


def test_local_issuer_auth_config_is_a_valid_policy(issuer: LocalIssuer) -> None:
    policy = VOPolicy.from_auth_config("bamboo", issuer.auth_config())
    assert policy.client_ids == (LOCAL_CLIENT_ID,)
    assert policy.oidc_config_url == "http://127.0.0.1:25080/.well-known/openid-configuration"


def test_static_keys_reject_non_jwks() -> None:
    with pytest.raises(ValueError):
        StaticKeys({"no": "keys"}, ISSUER_URL)


# --- discovery over HTTP -----------------------------------------------------------------------


class IdentityProvider:
    """A tiny real HTTP server publishing an issuer's discovery document and JWKS."""

    def __init__(self, home: Path) -> None:
        self.requests: list[str] = []
        self.failing = False
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider.requests.append(self.path)
                documents = {
                    "/.well-known/openid-configuration": provider.issuer.discovery_document(),
                    "/.well-known/jwks.json": provider.issuer.jwks(),
                }
                if provider.failing or self.path not in documents:
                    self.send_error(500 if provider.failing else 404)
                    return
                body = json.dumps(documents[self.path]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.issuer = LocalIssuer.load_or_create(home, self.url)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def provider(home: Path, issuer: LocalIssuer) -> Iterator[IdentityProvider]:
    served = IdentityProvider(home)
    yield served
    served.close()


def discovery_verifier(
    provider: IdentityProvider, clock: Callable[[], datetime], monotonic: FakeMonotonic
) -> TokenVerifier:
    policy = VOPolicy.from_auth_config("bamboo", provider.issuer.auth_config())
    keys = DiscoveryKeys(policy.oidc_config_url or "", clock=monotonic)
    return TokenVerifier({"bamboo": policy}, {"bamboo": keys}, clock=clock)


async def test_discovery_keys_are_fetched_and_cached(provider: IdentityProvider) -> None:
    monotonic = FakeMonotonic()
    clock = FakeClock(datetime.now(UTC))
    verifier = discovery_verifier(provider, clock, monotonic)

    def token(user: str) -> str:
        return provider.issuer.issue_token(user=user, now=clock.now)

    assert (await verifier.verify(token("a"), "bamboo")).dn == "A/CN=nickname:a"
    assert provider.requests == ["/.well-known/openid-configuration", "/.well-known/jwks.json"]
    monotonic.now += 599
    await verifier.verify(token("b"), "bamboo")
    assert len(provider.requests) == 2
    monotonic.now += 2
    await verifier.verify(token("c"), "bamboo")
    assert len(provider.requests) == 4

    # An unknown kid refetches at most once per minute.
    stranger = provider.issuer.issue_token(user="d", now=clock.now)
    _, payload, signature = stranger.split(".")
    forged_header = base64.urlsafe_b64encode(
        json.dumps({"alg": "RS256", "kid": "rotated", "typ": "JWT"}).encode()
    ).rstrip(b"=")
    unknown_kid = ".".join((forged_header.decode(), payload, signature))
    assert "no signing key" in await rejected(verifier, unknown_kid, "bamboo")
    assert len(provider.requests) == 4
    monotonic.now += 61
    assert "no signing key" in await rejected(verifier, unknown_kid, "bamboo")
    assert len(provider.requests) == 6
    assert "no signing key" in await rejected(verifier, unknown_kid, "bamboo")
    assert len(provider.requests) == 6


async def test_discovery_failure_keeps_stale_keys(provider: IdentityProvider) -> None:
    monotonic = FakeMonotonic()
    clock = FakeClock(datetime.now(UTC))
    verifier = discovery_verifier(provider, clock, monotonic)
    await verifier.verify(provider.issuer.issue_token(user="a", now=clock.now), "bamboo")
    provider.failing = True
    monotonic.now += 601
    identity = await verifier.verify(provider.issuer.issue_token(user="b", now=clock.now), "bamboo")
    assert identity.user_name == "B"
    assert provider.requests[-1] == "/.well-known/openid-configuration"


async def test_unreachable_provider_rejects_tokens(provider: IdentityProvider) -> None:
    provider.failing = True
    clock = FakeClock(datetime.now(UTC))
    verifier = discovery_verifier(provider, clock, FakeMonotonic())
    token = provider.issuer.issue_token(user="a", now=clock.now)
    assert "failed to get the signing keys" in await rejected(verifier, token, "bamboo")
    assert "unavailable" in await rejected(verifier, token, "bamboo")
    assert len(provider.requests) == 1


async def test_default_key_source_uses_discovery(provider: IdentityProvider) -> None:
    policy = VOPolicy.from_auth_config("bamboo", provider.issuer.auth_config())
    verifier = TokenVerifier(
        {
            "bamboo": policy,
            "bamboo.pilot": VOPolicy.from_auth_config("bamboo.pilot", provider.issuer.auth_config()),
        }
    )
    token = provider.issuer.issue_token(user="pilot", role="pilot")
    assert (await verifier.verify(token, "bamboo.pilot")).fqans == ("/bamboo/Role=pilot",)
    assert len(provider.requests) == 2
