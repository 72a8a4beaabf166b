"""``/api/v1/creds/*``: user secrets, cached proxies and access tokens, key pairs, token keys
(api-v1.md §2.7; upstream's credential_management module).

Behaviour lives in ``logic/secrets.py``; the keyring comes from the home (``home.KeyringSource``).
"""

from __future__ import annotations

import json
import logging
from typing import Annotated

from bamboo.api.call import Call
from bamboo.api.envelope import Reply, failure
from bamboo.api.registry import DbUse, Module
from bamboo.api.v1 import registry
from bamboo.home import KeyringError
from bamboo.logic import secrets
from bamboo.logic.errors import InvalidInput

creds = Module(registry, "creds")
log = logging.getLogger(__name__)

KEYRING_UNAVAILABLE = "secrets are unavailable on this server"


def _keyring(call: Call) -> secrets.Keyring:
    try:
        return call.state.keyring.keyring()
    except KeyringError as exc:
        # The reason names server paths; the client only learns that secrets are unavailable.
        log.error("secrets keyring unusable: %s", exc)
        raise secrets.SecretsUnavailable(KEYRING_UNAVAILABLE) from exc


def _limits(call: Call) -> secrets.SecretLimits:
    settings = call.state.settings
    return secrets.SecretLimits(
        max_value_bytes=settings.secrets_max_value_bytes,
        max_user_bytes=settings.secrets_max_user_bytes,
        max_keys=settings.secrets_max_keys,
    )


@creds.endpoint(method="POST", db=DbUse.WRITE)
async def set_user_secrets(
    call: Call,
    key: Annotated[str | None, "Secret name; null deletes all the caller's secrets."] = None,
    value: Annotated[str | None, "Secret value; null deletes the key (and its ___file___: twin)."] = None,
) -> Reply:
    """Set or delete one of the caller's secrets, or delete them all; answers ``OK``."""
    try:
        await secrets.set_user_secret(
            call.db, call.state.clock, _keyring(call), _limits(call), call.caller.user_name, key, value
        )
    except InvalidInput as exc:
        return failure(exc.message)
    except secrets.SecretsUnavailable as exc:
        log.error("set_user_secrets of %r: %s", call.caller.user_name, exc.message)
        return failure("database error")
    return Reply(message="OK")


@creds.endpoint(method="GET")
async def get_user_secrets(
    call: Call,
    # Upstream's List[str] defaulting to None: the parameter checks accept None by the default.
    keys: Annotated[list[str], "Only these secrets (default: all)."] = None,  # type: ignore[assignment]  # noqa: RUF013
) -> Reply:
    """The caller's secrets as a JSON **string** of ``{key: value}`` (``"{}"`` when none)."""
    limit = call.state.settings.secrets_max_keys
    if keys is not None and len(keys) > limit:
        return failure(f"at most {limit} keys may be asked for", {})
    try:
        data = await secrets.get_user_secrets(call.db, _keyring(call), call.caller.user_name, keys)
    except secrets.SecretsUnavailable as exc:
        log.error("get_user_secrets of %r: %s", call.caller.user_name, exc.message)
        return failure("database error", {})
    return Reply(data=json.dumps(data))


@creds.endpoint(method="GET")
async def get_key_pair(
    call: Call,
    public_key_name: Annotated[str, "File name of the public key in the server's key pair directory."],
    private_key_name: Annotated[str, "File name of the private key."],
) -> Reply:
    """A configured key pair, for callers allowed ``k``: ``{"public_key", "private_key"}``."""
    settings = call.state.settings
    pair = await secrets.key_pair(
        call.db,
        call.caller.user_name,
        settings.key_pair_dir,
        settings.server_hostnames[0],
        public_key_name,
        private_key_name,
    )
    return Reply(data=pair)


@creds.endpoint(method="GET")
async def get_proxy(
    call: Call,
    role: Annotated[str | None, "VOMS role of the proxy (default: none)."] = None,
    dn: Annotated[str | None, "Whose proxy (default: the caller's)."] = None,
) -> Reply:
    """A cached X.509 proxy, for callers allowed ``p``: ``{"user_proxy": <PEM>}``."""
    identity = call.caller
    text = await secrets.proxy(call.db, _keyring(call), identity.user_name, identity.handler_dn, dn, role)
    return Reply(data={"user_proxy": text})


@creds.endpoint(method="GET")
async def get_access_token(
    call: Call,
    client_name: Annotated[str, "OAuth client whose cached access token is asked for."],
    token_key: Annotated[str | None, "One of the client's token keys, when it has any configured."] = None,
) -> Reply:
    """A cached access token, for callers allowed ``p``: ``{"user_proxy": <token>}`` (upstream's key)."""
    text = await secrets.access_token(
        call.db,
        _keyring(call),
        call.caller.user_name,
        call.state.settings.token_keys_file,
        client_name,
        token_key,
    )
    return Reply(data={"user_proxy": text})


@creds.endpoint(method="GET")
async def get_token_key(
    call: Call,
    client_name: Annotated[str, "OAuth client whose latest token key is asked for."],
) -> Reply:
    """The latest token key of a client, for callers allowed ``t``: ``{"tokenKey": <key>}``."""
    key = await secrets.latest_token_key(
        call.db, call.caller.user_name, call.state.settings.token_keys_file, client_name
    )
    return Reply(data={"tokenKey": key})
