"""Settings: environment names, validation and the generated reference page."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from bamboo.config import Settings, settings_markdown

DOCS = Path(__file__).resolve().parents[2] / "docs" / "settings.md"


def test_docs_page_is_current() -> None:
    assert DOCS.read_text() == settings_markdown(), "regenerate docs/settings.md (command at its top)"


def test_every_setting_is_documented() -> None:
    assert all(field.description for field in Settings.model_fields.values())


def test_environment_and_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BAMBOO_HOME", str(tmp_path))
    monkeypatch.setenv("BAMBOO_PRODUCTION_DNS", '["/CN=prodsys"]')
    settings = Settings()
    assert settings.home == tmp_path
    assert settings.production_dns == ["/CN=prodsys"]
    assert settings.effective_database_url == f"sqlite+aiosqlite:///{tmp_path.resolve() / 'bamboo.db'}"
    monkeypatch.setenv("BAMBOO_DATABASE_URL", "postgresql+asyncpg://u@h/db")
    assert Settings().effective_database_url == "postgresql+asyncpg://u@h/db"


def test_trusted_proxies_must_be_networks() -> None:
    assert Settings(trusted_proxies=["10.0.0.0/8", "::1"]).trusted_proxy_networks[0].num_addresses == 2**24
    with pytest.raises(ValidationError):
        Settings(trusted_proxies=["not-an-address"])
