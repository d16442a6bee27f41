"""Settings come from AMPGATE_* variables and an optional TOML file; variables win."""

from __future__ import annotations

from services.common.settings import load_settings

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
