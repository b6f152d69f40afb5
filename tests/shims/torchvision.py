"""A stand-in for ``torchvision`` so that timm imports without it (tests only).

Only CUDA builds of torchvision exist for torch 2.13.0 on this platform, and timm (installed with
``--no-deps``) imports a few of its names at module level: ``FrozenBatchNorm2d``, the transforms
modules and ``InterpolationMode``. ViT models never call them; any use raises, so a test cannot
depend on the stand-in by accident. :func:`import_timm` puts the modules in ``sys.modules`` only
while timm imports, and only when the real torchvision is missing: left there, they would make
transformers believe that torchvision is installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

__all__ = ["import_timm"]

MODULES = (
    "torchvision", "torchvision.ops", "torchvision.ops.misc", "torchvision.transforms",
    "torchvision.transforms.functional", "torchvision.datasets", "torchvision.models",
    "torchvision.models.feature_extraction", "torchvision.utils",
)


class _Missing:
    """Any torchvision name: importable, but using it says that torchvision is absent."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError("torchvision is not installed; the test shim provides names only")


class _Enum(type):
    # InterpolationMode.BILINEAR etc. are read at import time as dictionary keys.
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return f"{cls.__name__}.{name}"


class InterpolationMode(metaclass=_Enum):
    pass


def _module(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = []            # a package, so that submodule imports resolve

    def __getattr__(attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return InterpolationMode if attr == "InterpolationMode" else type(attr, (_Missing,), {})

    module.__getattr__ = __getattr__
    return module


def import_timm():
    """Import timm (and the parts the tests use) with the stand-in registered, then remove it."""
    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is not None:
        return importlib.import_module("timm")
    modules = {name: _module(name) for name in MODULES}
    for name, module in modules.items():
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(modules[parent], child, module)
    sys.modules.update(modules)
    try:
        for name in ("timm", "timm.data", "timm.models", "timm.models.deit", "timm.models.vision_transformer",
                     "timm.models._hub"):
            importlib.import_module(name)
    finally:
        for name in MODULES:
            sys.modules.pop(name, None)
    return sys.modules["timm"]
