"""Every test gets its own empty program cache, so no test reads or fills the user's ~/.cache/intvit."""

import pytest


@pytest.fixture(autouse=True)
def _private_program_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
