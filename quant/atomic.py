"""Output files that are never half written, and output paths checked before the work.

Every file intvit writes (programs, reports, CSVs, JSON, plots, Verilog folders) goes through
``atomic_file`` or ``atomic_folder``: the data is written to a temporary name in the target's
own directory and renamed into place only when complete, so a full disk, an exception or
Ctrl-C leaves the old file (or none), never a stump. ``check_output_file`` and
``check_output_folder`` let a command refuse a bad output path before its long work starts.
Operating-system failures while writing become one-line ``IntVitError``s naming the path.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from intvit.quant.errors import IntVitError

__all__ = ["atomic_file", "atomic_folder", "write_text", "check_output_file", "check_output_folder",
           "os_error_message"]

# Longest file name most file systems take (NAME_MAX); temporary names keep within it.
NAME_MAX = 255
TEMP_STEM_CHARS = 64


def os_error_message(path: str | Path, exc: OSError) -> str:
    """One line for an operating-system error on ``path``: ``out.npz: No space left on device``."""
    return f"{path}: {exc.strerror or exc}"


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _name_too_long(path: Path) -> bool:
    return len(os.fsencode(path.name)) > NAME_MAX


def check_output_file(path: str | Path) -> Path:
    """``path`` as a Path if a file can be written there; commands call this before any long work."""
    path = Path(path)
    try:
        if _name_too_long(path):
            raise IntVitError(f"{path}: file name is longer than {NAME_MAX} bytes")
        if path.is_dir():
            raise IntVitError(f"{path}: is a directory; give a file name")
        if not path.parent.is_dir():
            raise IntVitError(f"{path}: directory {path.parent} does not exist")
    except OSError as exc:
        raise IntVitError(os_error_message(path, exc)) from None
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise IntVitError(f"{path}: directory {path.parent} is not writable")
    return path


def check_output_folder(path: str | Path) -> Path:
    """``path`` as a Path if a folder can be written there (created with its parents if missing)."""
    path = Path(path)
    try:
        if any(len(os.fsencode(part)) > NAME_MAX for part in path.parts):
            raise IntVitError(f"{path}: a directory name is longer than {NAME_MAX} bytes")
        existing = path
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            where = "" if existing == path else f"{existing} "
            raise IntVitError(f"{path}: {where}is a file, not a directory")
    except OSError as exc:
        raise IntVitError(os_error_message(path, exc)) from None
    if not os.access(existing, os.W_OK | os.X_OK):
        raise IntVitError(f"{path}: directory {existing} is not writable")
    return path


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it becomes ``path`` only if the block completes.

    The temporary name keeps ``path``'s suffix (so tools that pick a format from it, such as
    matplotlib, still do); on any exception, KeyboardInterrupt included, it is removed and the
    exception propagates (operating-system errors as one-line ``IntVitError``).
    """
    path = Path(path)
    try:
        handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:TEMP_STEM_CHARS]}.",
                                        suffix=f".tmp{path.suffix}")
    except OSError as exc:
        raise IntVitError(os_error_message(path, exc)) from None
    os.close(handle)
    temp = Path(temp)
    try:
        yield temp
        temp.chmod(0o666 & ~_current_umask())
        os.replace(temp, path)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise IntVitError(os_error_message(path, exc)) from None
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield an empty staging folder whose files appear in ``path`` only if the block completes.

    A missing ``path`` is staged beside it and renamed into place whole. An existing one keeps
    the files it has; the staged files are moved into it at the end (each rename atomic), so a
    failure part way leaves no new file behind and no old one replaced.
    """
    path = check_output_folder(path)
    fresh = not path.exists()
    try:
        if fresh:
            path.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name[:TEMP_STEM_CHARS]}."))
        else:
            staging = Path(tempfile.mkdtemp(dir=path, prefix=".intvit-staging."))
    except OSError as exc:
        raise IntVitError(os_error_message(path, exc)) from None
    try:
        yield staging
        if fresh:
            staging.chmod(0o777 & ~_current_umask())
            os.rename(staging, path)
        else:
            for item in sorted(staging.iterdir()):
                os.replace(item, path / item.name)
            staging.rmdir()
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise IntVitError(os_error_message(path, exc)) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    path = Path(path)
    with atomic_file(path) as temp:
        temp.write_text(text, encoding="utf-8")
    return path
