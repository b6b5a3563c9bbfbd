"""Settings from the environment: list settings take a plain value, a comma-separated list or a JSON list."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from jobs.settings import ServiceSettings


@pytest.mark.parametrize("value, expected", [
    ("weights/mine", [Path("weights/mine")]),  # one bundle: just its path
    ("weights/mine, weights/moving-digits", [Path("weights/mine"), Path("weights/moving-digits")]),
    ('["weights/mine", "weights/moving-digits"]', [Path("weights/mine"), Path("weights/moving-digits")]),
])
def test_bundles_take_a_path_a_comma_list_or_json(monkeypatch, value, expected):
    monkeypatch.setenv("VGS_BUNDLES", value)
    assert ServiceSettings().bundles == expected


def test_the_other_lists_read_the_same_way(monkeypatch):
    monkeypatch.setenv("VGS_CORS_ORIGINS", "https://a.example,https://b.example")
    monkeypatch.setenv("VGS_WEBHOOK_ALLOW", "127.0.0.1")
    settings = ServiceSettings()
    assert settings.cors_origins == ["https://a.example", "https://b.example"]
    assert settings.webhook_allow == ["127.0.0.1"]


def test_broken_json_names_the_setting(monkeypatch):
    monkeypatch.setenv("VGS_BUNDLES", '["weights/mine"')
    with pytest.raises(ValidationError, match="bundles"):
        ServiceSettings()
