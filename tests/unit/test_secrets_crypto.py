"""Sealing secrets at rest: AES-GCM with a nonce per write, bound to purpose, owner and key id;
the keyring file in the home and its reload; resealing under a new key."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from pydantic import SecretStr

from bamboo.config import Settings
from bamboo.home import (
    KeyringError,
    KeyringSource,
    ensure_keyring_file,
    read_keyring_file,
    write_keyring_file,
)
from bamboo.logic.secrets import Keyring, Sealed, SecretKey, SecretsUnavailable

PLAIN = b'{"password": "hunter2"}'


def test_seal_opens_for_its_owner_only() -> None:
    keyring = Keyring([SecretKey.new()])
    sealed = keyring.seal("user-secrets", "Jane Doe", PLAIN)
    assert keyring.open("user-secrets", "Jane Doe", sealed) == PLAIN
    assert PLAIN not in sealed.blob and b"hunter2" not in sealed.blob
    with pytest.raises(SecretsUnavailable, match="altered or misplaced"):
        keyring.open("user-secrets", "John Smith", sealed)
    with pytest.raises(SecretsUnavailable):
        keyring.open("proxy", "Jane Doe", sealed)


def test_every_seal_has_its_own_nonce() -> None:
    keyring = Keyring([SecretKey.new()])
    first = keyring.seal("user-secrets", "Jane Doe", PLAIN)
    second = keyring.seal("user-secrets", "Jane Doe", PLAIN)
    assert first.blob[:12] != second.blob[:12]
    assert first.blob != second.blob


@pytest.mark.parametrize("position", [0, 12, 20, -1])
def test_tampered_values_are_refused(position: int) -> None:
    keyring = Keyring([SecretKey.new()])
    sealed = keyring.seal("user-secrets", "Jane Doe", PLAIN)
    blob = bytearray(sealed.blob)
    blob[position] ^= 0x01
    with pytest.raises(SecretsUnavailable):
        keyring.open("user-secrets", "Jane Doe", Sealed(sealed.key_id, bytes(blob)))
    for cut in (sealed.blob[:-1], sealed.blob[:20], sealed.blob[:5], b""):
        with pytest.raises(SecretsUnavailable):
            keyring.open("user-secrets", "Jane Doe", Sealed(sealed.key_id, cut))


def test_a_key_id_swapped_for_another_is_refused() -> None:
    old, new = SecretKey.new(), SecretKey.new()
    keyring = Keyring([old, new])
    sealed = keyring.seal("user-secrets", "Jane Doe", PLAIN)
    with pytest.raises(SecretsUnavailable):
        keyring.open("user-secrets", "Jane Doe", Sealed(old.id, sealed.blob))
    with pytest.raises(SecretsUnavailable, match="not in the keyring"):
        Keyring([old]).open("user-secrets", "Jane Doe", sealed)


def test_rotation_reseals_under_the_current_key() -> None:
    old, new = SecretKey.new(), SecretKey.new()
    sealed = Keyring([old]).seal("user-secrets", "Jane Doe", PLAIN)
    both = Keyring([old, new])
    resealed = both.reseal("user-secrets", "Jane Doe", sealed)
    assert sealed.key_id == old.id and resealed.key_id == new.id
    assert Keyring([new]).open("user-secrets", "Jane Doe", resealed) == PLAIN


def test_key_ids_come_from_the_key_and_the_material_stays_out_of_reprs() -> None:
    material = os.urandom(32)
    key = SecretKey.of(material)
    assert SecretKey.from_base64(base64.b64encode(material).decode()).id == key.id
    assert material.hex() not in repr(key) and base64.b64encode(material).decode() not in repr(key)
    with pytest.raises(ValueError):
        SecretKey.of(b"short")
    with pytest.raises(ValueError):
        SecretKey.from_base64("not base64 !!")


def test_keyring_file_is_private_and_reloaded_when_changed(tmp_path: Path) -> None:
    path = tmp_path / "home" / "secrets-keyring.json"
    ensure_keyring_file(path)
    assert path.stat().st_mode & 0o777 == 0o600
    first = read_keyring_file(path)
    ensure_keyring_file(path)  # an existing keyring is never replaced
    assert read_keyring_file(path) == first
    source = KeyringSource(Settings(home=tmp_path / "home"))
    assert source.rotatable and source.keyring().current == first[0]
    added = SecretKey.new()
    write_keyring_file(path, [*first, added])
    assert path.stat().st_mode & 0o777 == 0o600
    assert source.keyring().current == added


def test_broken_keyring_files_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    settings = Settings(home=tmp_path, secrets_key_file=path)
    with pytest.raises(KeyringError, match="cannot read"):
        KeyringSource(settings).keyring()
    path.write_text(json.dumps({"keys": [{"id": "wrong", "key": SecretKey.new().to_base64()}]}))
    with pytest.raises(KeyringError, match="does not match"):
        KeyringSource(settings).keyring()
    path.write_text(json.dumps({"keys": []}))
    with pytest.raises(KeyringError, match="holds no key"):
        read_keyring_file(path)


def test_key_from_a_setting(tmp_path: Path) -> None:
    key = SecretKey.new()
    source = KeyringSource(Settings(home=tmp_path, secrets_key=SecretStr(key.to_base64())))
    assert not source.rotatable and source.keyring().current == key
    assert not (tmp_path / "secrets-keyring.json").exists()
    assert key.to_base64() not in repr(Settings(home=tmp_path, secrets_key=SecretStr(key.to_base64())))
    bad = KeyringSource(Settings(home=tmp_path, secrets_key=SecretStr("c2hvcnQ=")))
    with pytest.raises(KeyringError, match="BAMBOO_SECRETS_KEY"):
        bad.keyring()
