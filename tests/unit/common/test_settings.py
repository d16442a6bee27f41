"""Settings come from AMPGATE_* variables and an optional TOML file; variables win."""

from __future__ import annotations

import pytest

from services.common.settings import ConfigError, Settings, load_settings, unknown_env_name

TOML = """
state_dir = "/var/lib/ampgate"

[http]
port = 9000

[pricing]
base_url = "https://pricing.example.com/base"
api_token = "from-file"

[cache.routes.prices]
ttl_s = 120
"""


def test_toml_file_and_environment(tmp_path, monkeypatch):
    path = tmp_path / "ampgate.toml"
    path.write_text(TOML)
    monkeypatch.setenv("AMPGATE_CONFIG", str(path))
    monkeypatch.setenv("AMPGATE_HTTP__PORT", "9100")
    settings = load_settings()
    assert settings.http.port == 9100  # the environment wins
    assert str(settings.state_dir) == "/var/lib/ampgate"
    assert settings.pricing is not None
    assert settings.pricing.api_token.get_secret_value() == "from-file"
    assert str(settings.pricing.base_url) == "https://pricing.example.com/base"
    assert settings.cache.policy("prices").ttl_s == 120
    assert settings.cache.policy("passport_public").ttl_s == settings.cache.default_ttl_s
    assert "from-file" not in repr(settings)


def test_every_setting_of_the_model_is_a_known_variable(monkeypatch):
    # Derived from the model: each top-level field, and nothing else, is accepted.
    for field in Settings.model_fields:
        assert unknown_env_name({f"AMPGATE_{field.upper()}__X": "1"}) is None
        assert unknown_env_name({f"ampgate_{field}": "1"}) is None  # case-insensitive
    assert unknown_env_name({"AMPGATE_NOPE": "1", "AMPGATE_HTTP__PORT": "1"}) == "AMPGATE_NOPE"
    assert unknown_env_name({"OTHER_THING": "1", "AMPGATE_TEST_ANYTHING": "x",
                             "AMPGATE_CONFIG": "f"}) is None


def test_the_documented_cluster_variables_are_accepted(monkeypatch):
    monkeypatch.setenv("AMPGATE_CLUSTER__REDIS_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("AMPGATE_CLUSTER__LEASE_S", "20")
    monkeypatch.setenv("AMPGATE_TEST_WHATEVER", "test-only variables are not settings")
    settings = load_settings()
    assert settings.cluster.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.cluster.lease_s == 20
    monkeypatch.delenv("AMPGATE_CLUSTER__REDIS_URL")
    assert load_settings().cluster.redis_url is None  # unset: single-replica mode


def test_the_cluster_key_prefix_defaults_to_ampgate_and_refuses_what_would_overlap(
        monkeypatch):
    assert load_settings().cluster.key_prefix == "ampgate"
    monkeypatch.setenv("AMPGATE_CLUSTER__KEY_PREFIX", "ampgate-staging")
    assert load_settings().cluster.key_prefix == "ampgate-staging"
    # "a:b" would nest inside deployment "a"'s keys; "*" would widen the purge's scan
    for bad in ("ampgate:cache", "amp*", ""):
        monkeypatch.setenv("AMPGATE_CLUSTER__KEY_PREFIX", bad)
        with pytest.raises(ConfigError) as exc:
            load_settings()
        assert "AMPGATE_CLUSTER__KEY_PREFIX" in str(exc.value)


def test_an_unknown_variable_is_named_with_a_hint(monkeypatch):
    monkeypatch.setenv("AMPGATE_CLUSTRE__REDIS_URL", "redis://127.0.0.1:6379")
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert str(exc.value) == ("AMPGATE_CLUSTRE__REDIS_URL: unknown setting "
                              "(did you mean AMPGATE_CLUSTER?)")
