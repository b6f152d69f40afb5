"""Calibrated programs kept between runs, so a model is calibrated once per set of inputs.

A program is stored in the user cache folder (``$XDG_CACHE_HOME/intvit``, else
``~/.cache/intvit``) under a key that hashes everything calibration depends on:

* the weights: the bytes of ``--weights`` (and of its ``.json`` config sidecar), the embedded
  MNIST weights' bytes, or, for seeded random weights, the seed and the torch version that drew them;
* the model preset, the calibration data (a built-in set by name; a directory by the path,
  size and modification time of every file under it) and every calibration option;
* the intvit version and the source of the integer semantics: the bytes of every module of
  ``intvit.quant`` (the program format version with them), so a changed rounding or a new format
  in a checkout that keeps its version number calibrates again instead of reusing a stale program.

Entries are written atomically (``IntProgram.save`` writes a temporary file and renames it) and
read back through ``load_program``, which checks every field: a damaged entry is reported on
stderr, removed and rebuilt, never used. Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import intvit
import intvit.quant
from intvit.quant.errors import IntVitError

if TYPE_CHECKING:
    from intvit.quant.config import ViTConfig
    from intvit.quant.program import IntProgram

__all__ = ["cache_dir", "program_key", "weights_identity", "data_identity", "source_identity", "cached",
           "EMBEDDED_FILES"]

# The integer semantics' source, and what the embedded default model is made of
# (quant.checkpoint.EMBEDDED_WEIGHTS and its sidecar).
QUANT_SOURCE = Path(intvit.quant.__file__).parent
EMBEDDED_FILES = tuple(QUANT_SOURCE / "weights" / name
                       for name in ("mnist.safetensors", "mnist.json"))
HASH_BLOCK = 1 << 20


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/intvit``, or ``~/.cache/intvit`` when that variable is unset or empty."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "intvit"


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while block := handle.read(HASH_BLOCK):
                digest.update(block)
    except OSError as exc:
        raise IntVitError(f"{path}: {exc.strerror or exc}") from None
    return digest.hexdigest()


def weights_identity(weights: str | Path | None, seed: int, embedded: bool) -> str:
    """What fixes the float weights: the bytes of a checkpoint file (with its ``.json`` sidecar) or of
    every file of a checkpoint folder, the embedded model's files, or the seed and torch version."""
    if weights is not None:
        path = Path(weights)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
        else:
            files = [path] + [p for p in (path.with_suffix(".json"),) if p != path and p.is_file()]
        return "files:" + ",".join(f"{p.relative_to(path) if path.is_dir() else p.name}={_file_digest(p)}"
                                   for p in files)
    if embedded:
        return "embedded:" + ",".join(_file_digest(p) for p in EMBEDDED_FILES)
    return f"random:seed={seed}:torch={metadata.version('torch')}"


def data_identity(data: str, builtin: tuple[str, ...]) -> str:
    """A built-in set by name; a directory by every file's relative path, size and modification time."""
    if data in builtin:
        return f"builtin:{data}"
    root = Path(data)
    if not root.is_dir():
        return f"missing:{root}"         # calibration itself reports the missing directory
    digest = hashlib.sha256(str(root.resolve()).encode())
    for path in sorted(root.rglob("*")):
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return "dir:" + digest.hexdigest()


def source_identity(package: Path = QUANT_SOURCE) -> str:
    """A digest of the bytes of every Python module in ``package`` (by default ``intvit.quant``).

    Read as files, not imported: computing a key loads none of the integer kernels (numba).
    """
    digest = hashlib.sha256()
    for path in sorted(package.glob("*.py")):
        digest.update(f"{path.name}\0{_file_digest(path)}\n".encode())
    return digest.hexdigest()


def program_key(parts: dict) -> str:
    """Hex key of a calibrated program: a hash of ``parts``, the intvit version and the quant source."""
    text = json.dumps({**parts, "intvit": intvit.__version__, "quant": source_identity()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def cached(key: str, build: Callable[[], IntProgram], config: ViTConfig | None = None) -> IntProgram:
    """The program stored under ``key``, or ``build()``'s result, stored there for next time.

    An entry that ``load_program`` refuses, or whose model is not ``config``, is reported on
    stderr and rebuilt. A cache folder that cannot be written only costs the next run its time.
    """
    path = cache_dir() / f"program-{key}.npz"
    if path.is_file():
        from intvit.quant.program import load_program       # numba with it: not before a calibration

        try:
            program = load_program(path)
            if config is None or program.config == config:
                return program
            problem = f"program is for model {program.config.name!r}"
        except IntVitError as exc:
            problem = str(exc)
        print(f"intvit: ignoring cache entry {path.name}: {problem}; calibrating again", file=sys.stderr)
    program = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        program.save(path)
    except (OSError, IntVitError) as exc:
        print(f"intvit: cannot write the program cache ({' '.join(str(exc).split())})", file=sys.stderr)
    return program
