"""``index.url``: SQLite by default, a PostgreSQL URL validated with errors that name the key, never the password."""

from __future__ import annotations

import pytest

from config import ConfigError
from config.settings import parse_settings, redact_url


def test_default_is_sqlite_in_the_storage_folder() -> None:
    assert parse_settings({}, environ={}).index.url is None
    assert parse_settings({"index": {"url": ""}}, environ={}).index.url is None


def test_a_postgresql_url_is_kept_whole_and_masked_in_repr() -> None:
    url = "postgresql://medagent:s3cret@db.example.org:5433/medagent"
    settings = parse_settings({"index": {"url": url}}, environ={})
    assert settings.index.url == url
    assert settings.model_dump(mode="json")["index"] == {"url": url}  # the embedded worker reads it back
    assert "s3cret" not in repr(settings.index) and "s3cret" not in repr(settings)
    assert "medagent:***@db.example.org:5433" in repr(settings.index)


def test_the_environment_sets_the_url() -> None:
    url = "postgresql://postgres@127.0.0.1:5432/medagent"
    settings = parse_settings({}, environ={"MEDAGENT__INDEX__URL": url})
    assert settings.index.url == url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://u:s3cret@h/db", "must be a postgresql:// URL"),
        ("/var/lib/medagent/index.sqlite3", "must be a postgresql:// URL"),
        ("postgresql://u:s3cret@db.example.org", "must name the database"),
        ("postgresql:///medagent", "must name the host"),
        ("postgresql://u:s3cret@db.example.org:99999/medagent", "is not a valid URL"),
    ],
)
def test_invalid_urls_name_the_key_and_hide_the_password(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings({"index": {"url": url}}, environ={})
    text = str(caught.value)
    assert "index.url:" in text and message in text
    assert "s3cret" not in text


def test_unknown_index_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"index\.path: unknown key"):
        parse_settings({"index": {"path": "/tmp/x"}}, environ={})


def test_redact_url() -> None:
    assert redact_url("postgresql://a:b@h:1/d?sslmode=require") == "postgresql://a:***@h:1/d?sslmode=require"
    assert redact_url("postgresql://a@h/d") == "postgresql://a@h/d"
