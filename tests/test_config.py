"""Every setting is documented in .env.example, and the example parses."""

from __future__ import annotations

import re

from scripts.devservices import REPO
from shared.config import Settings


def example_vars() -> dict[str, str]:
    text = (REPO / ".env.example").read_text()
    return dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", text, flags=re.M))


def test_every_setting_is_documented():
    documented = set(example_vars())
    fields = {name.upper() for name in Settings.model_fields}
    assert fields <= documented, f"undocumented settings: {sorted(fields - documented)}"


def test_example_values_are_valid_settings():
    values = {k.lower(): v for k, v in example_vars().items() if k.lower() in Settings.model_fields}
    settings = Settings(_env_file=None, **values)
    assert settings.database_url is None  # empty means "embedded"
    assert settings.vector_backend == "pgvector"
