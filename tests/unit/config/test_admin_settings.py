"""``admin``: where the API listens and its bearer token, from the file or ``MEDAGENT_ADMIN_TOKEN``, never shown."""

from __future__ import annotations

import pytest

from config import ConfigError
from config.settings import parse_settings

TOKEN = "0123456789abcdef-token"


def test_defaults_bind_loopback_and_have_no_token() -> None:
    admin = parse_settings({}, environ={}).admin
    assert (admin.bind, admin.port, admin.token) == ("127.0.0.1", 8080, None)


def test_token_is_masked_in_repr_and_never_dumped() -> None:
    settings = parse_settings({"admin": {"token": TOKEN}}, environ={})
    assert settings.admin.token is not None and settings.admin.token.get_secret_value() == TOKEN
    assert TOKEN not in repr(settings) and TOKEN not in str(settings)
    assert settings.model_dump(mode="json")["admin"]["token"] is None


def test_environment_variable_wins_over_the_file() -> None:
    other = "fedcba9876543210-other"
    settings = parse_settings({"admin": {"token": TOKEN}}, environ={"MEDAGENT_ADMIN_TOKEN": other})
    assert settings.admin.token.get_secret_value() == other
    assert parse_settings({}, environ={"MEDAGENT_ADMIN_TOKEN": other}).admin.token.get_secret_value() == other


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"token": "short"}, "admin.token"),
        ({"token": f" {TOKEN}"}, "admin.token"),
        ({"port": 70000}, "admin.port"),
    ],
)
def test_bad_values_name_the_key_and_do_not_show_the_token(section: dict, key: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_settings({"admin": section}, environ={})
    assert raised.value.errors[0][0] == key
    assert "short" not in str(raised.value) and TOKEN not in str(raised.value)
