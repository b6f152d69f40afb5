"""Options and loaders that several subcommands share: which model, which weights, which data."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from intvit.quant.calibrate import CALIBRATION_METHODS
from intvit.quant.config import GELU_FORMS, INTERPOLATIONS, PRESETS, ViTConfig, get_config
from intvit.quant.atomic import check_output_file, write_text
from intvit.quant.errors import IntVitError

if TYPE_CHECKING:       # torch and the numba kernels load only in the commands that run them (seconds)
    from intvit.quant.architecture import ModelSpec
    from intvit.quant.model import ViT
    from intvit.quant.program import IntProgram

__all__ = [
    "add_model_arguments", "add_calibration_arguments", "add_compile_arguments", "add_calib_data_argument", "model_spec", "load_model",
    "load_images", "calibration_images", "build_program", "calibrated_program", "shape_program",
    "compile_model", "compile_batch", "quantized_test_images",
    "progress", "positive_int", "seed_int", "write_json", "check_output_file",
]

DEFAULT_MODEL = "mnist"
# Data sets that ship with intvit's dependencies, each with a fixed train/test split.
BUILTIN_DATA = ("mnist", "digits")
MAX_SEED = 2**32 - 1


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}")
    return value


def _float_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated numbers, not {text!r}") from None
    if not all(np.isfinite(values)):
        raise argparse.ArgumentTypeError(f"must be finite numbers, not {text!r}")
    return values


def _resize(text: str) -> tuple[int, ...]:
    parts = text.lower().split("x")
    if len(parts) in (1, 2) and all(p.isdigit() and int(p) > 0 for p in parts):
        return tuple(int(p) for p in parts)
    raise argparse.ArgumentTypeError(f"must be N (shorter side) or HxW, not {text!r}")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1], not {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1), not {text!r}")
    return value


# Options that set ViTConfig fields (architecture overrides and preprocessing): (flag, field, type, help).
CONFIG_OPTIONS = (
    ("--img-size", "img_size", positive_int, "input image side in pixels"),
    ("--patch-size", "patch_size", positive_int, "patch side in pixels"),
    ("--embed-dim", "embed_dim", positive_int, "token width"),
    ("--depth", "depth", positive_int, "number of blocks"),
    ("--heads", "num_heads", positive_int, "attention heads (no tensor shape fixes it)"),
    ("--eps", "eps", _positive_float, "LayerNorm epsilon"),
    ("--gelu", "gelu", None, "GELU form of the float model: exact (erf) or tanh"),
    ("--mean", "mean", _float_list, "input normalisation mean, one value per channel (0.5,0.5,0.5)"),
    ("--std", "std", _float_list, "input normalisation std, one value per channel"),
    ("--resize", "resize", _resize, "N: shorter side to N then centre crop; HxW: resize to exactly HxW"),
    ("--crop", "crop_pct", _fraction, "timm crop fraction: shorter side to img_size/CROP, then centre crop"),
    ("--interpolation", "interpolation", None, "resampling filter of the resize"),
)


def seed_int(text: str) -> int:
    """A ``--seed``: an integer in [0, 2**32), the range numpy and torch both take."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to {MAX_SEED}, not {text[:40]!r}")
    return value


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", choices=sorted(PRESETS),
                        help="preset shape; alone: the embedded MNIST ViT for mnist (the default), seeded random "
                             "weights otherwise; with --weights a shortcut that must agree with the checkpoint")
    parser.add_argument("--weights", metavar="PATH",
                        help="checkpoint: a Hugging Face save_pretrained folder (config.json, "
                             "preprocessor_config.json), a timm folder (config.json with pretrained_cfg), a "
                             "timm/DeiT or Hugging Face .pth/.bin/.safetensors, or intvit's .safetensors+.json; "
                             "architecture and preprocessing come from it")
    group = parser.add_argument_group("architecture and preprocessing overrides (default: from the checkpoint)")
    for flag, field, kind, text in CONFIG_OPTIONS:
        choices = {"gelu": GELU_FORMS, "interpolation": INTERPOLATIONS}.get(field)
        group.add_argument(flag, dest=field, type=kind, choices=choices, help=text,
                           metavar=None if choices else flag[2:].upper().replace("-", "_"))
    parser.add_argument("--seed", type=seed_int, default=0,
                        help="seed for random weights when no --weights are given (default: 0)")


def add_calibration_arguments(parser: argparse.ArgumentParser, program_option: bool = True) -> None:
    if program_option:
        parser.add_argument("--program", metavar="FILE", help="use this integer program instead of quantising")
    parser.add_argument("--calib-size", type=positive_int, default=256, metavar="N",
                        help="calibration images (default: %(default)s)")
    parser.add_argument("--calib-method", choices=CALIBRATION_METHODS, default="minmax",
                        help="activation range: max |x| or a percentile of |x| (default: %(default)s)")
    parser.add_argument("--percentile", type=float, default=99.99,
                        help="percentile for --calib-method percentile (default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=64, metavar="N",
                        help="images per batch (default: %(default)s)")
    parser.add_argument("--no-cache", action="store_true",
                        help="calibrate even if the program cache ($XDG_CACHE_HOME/intvit) holds this program, "
                             "and do not store it")


def add_compile_arguments(parser: argparse.ArgumentParser, data_use: str = "calibration and test images") -> None:
    """``--config``, the model, calibration and ``--data``: what a command compiling for the accelerator takes."""
    parser.add_argument("--config", metavar="FILE", help="accelerator TOML (default: the built-in accelerator)")
    add_model_arguments(parser)
    add_calibration_arguments(parser)
    parser.add_argument("--data", default="mnist",
                        help=f"{data_use}: mnist, digits or an ImageFolder directory (default: %(default)s)")


def model_spec(args: argparse.Namespace) -> ModelSpec:
    """The model the options name: architecture and preprocessing, and where they came from."""
    from intvit.quant.architecture import load_model_spec

    overrides = {field: getattr(args, field, None) for _, field, _, _ in CONFIG_OPTIONS}
    return load_model_spec(getattr(args, "weights", None), getattr(args, "model", None), overrides)


def load_model(args: argparse.Namespace, spec: ModelSpec | None = None) -> ViT:
    """The float model the options name (or ``spec``), in eval mode."""
    _passive_openmp()
    from intvit.quant.checkpoint import load_embedded

    spec = spec or model_spec(args)
    if _embedded(spec):
        return load_embedded().eval()
    return spec.build(getattr(args, "seed", 0))


def _passive_openmp() -> None:
    """Idle OpenMP workers sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE`` unless set).

    Read once, when torch first loads: called before that. With other jobs on the cores, spinning
    workers slowed the seeded DeiT-Tiny's build (tens of short parallel regions) from 0.1 s to
    2 s, and a cold functional DeiT-Tiny simulate took 1 s more CPU (load 6).
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _embedded(spec: ModelSpec) -> bool:
    """Whether ``spec`` is the MNIST ViT whose trained weights ship with intvit."""
    return spec.weights is None and spec.config == get_config(DEFAULT_MODEL)


def load_images(spec: str, config: ViTConfig, split: str, limit: int | None):
    """Normalised float images, labels and class names from ``mnist``, ``digits`` or a directory."""
    from intvit.quant.data import load_dataset, normalize

    images, labels, classes = load_dataset(spec, config, split=split, limit=limit)
    return normalize(images, config), labels, classes


def add_calib_data_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calib-data", metavar="DIR",
                        help="calibration images: mnist, digits (train split) or an ImageFolder directory (default: "
                             "the train split of a built-in --data; for a directory, the fifth of each class held "
                             "apart, never the evaluated images)")


def calibration_images(args: argparse.Namespace, config: ViTConfig, data: str, held_apart: bool = True):
    """Normalised calibration images and a line saying where they came from."""
    calib = getattr(args, "calib_data", None)
    spec = calib or data
    if spec in BUILTIN_DATA:
        split, where = "train", f"{spec} train split"
    elif calib or not held_apart:
        split, where = "all", f"{spec} (all of the folder)"
    else:
        split, where = "train", f"{spec} (every fifth image of each class, held apart from the evaluated ones)"
    if calib:
        where += ", --calib-data"
    images, _, _ = load_images(spec, config, split, args.calib_size)
    return images, f"{len(images)} images of {where}"


def build_program(args: argparse.Namespace, model: ViT, data: str, held_apart: bool = True) -> IntProgram:
    """Load ``--program`` (checked against the model) or quantise the model on calibration images.

    Calibration uses ``--calib-data``, else the train split of a built-in set, else the held-apart
    part of a directory (all of it when ``held_apart`` is false: nothing is evaluated then).
    The program's ``calibration["source"]`` says which.
    """
    from intvit.quant.program import load_program

    if getattr(args, "program", None):
        program = load_program(args.program)
        if program.config != model.config:
            raise IntVitError(f"{args.program}: program is for model {program.config.name!r} "
                              f"({program.config.embed_dim}-wide, depth {program.config.depth}), "
                              f"not the {model.config.name!r} model given")
        return program
    return calibrated_program(args, data, lambda: model, held_apart, model.config)


def _calibrate(args: argparse.Namespace, model: Callable[[], ViT], config: ViTConfig, data: str,
               held_apart: bool, meanwhile: Callable[[], object]) -> IntProgram:
    """Calibrate in a forked child (torch loads there, ``intvit.forked``) while this process loads the
    images and hands them over in shared memory, then runs ``meanwhile``. The images load here,
    not beside the child's torch import: in one process the two contended for the interpreter
    lock, and the calibration pass started 0.8 s later."""
    from intvit.forked import Handover, run_beside

    images = Handover(args.calib_size * config.in_chans * config.img_size ** 2 * np.dtype(np.float32).itemsize)
    where = []

    def calibration():
        from intvit.quant.calibrate import calibrate

        float_model = model()
        chosen = images.get()
        return calibrate(float_model, chosen, method=args.calib_method, percentile=args.percentile,
                         batch_size=args.batch_size,
                         progress=lambda it: progress(it, "calibrate", -(-len(chosen) // args.batch_size)))

    def beside():
        loaded, text = calibration_images(args, config, data, held_apart)
        images.put(loaded.astype(np.float32, copy=False))
        where.append(text)
        meanwhile()

    _passive_openmp()               # before torch loads in either process
    result = run_beside(calibration, beside, "calibration")
    from intvit.quant.ptq import assemble_program

    return assemble_program(config, result.parameters, result.ranges.range, {**result.settings, "source": where[0]})


def calibrated_program(args: argparse.Namespace, data: str, model: Callable[[], ViT],
                       held_apart: bool = True, config: ViTConfig | None = None,
                       meanwhile: Callable[[], object] = lambda: None) -> IntProgram:
    """The model calibrated as ``build_program`` does, from the program cache when it holds it.

    ``model()`` is called only when calibration runs, so a warm run builds no float model; its
    ``config`` (default: the options' ``model_spec``) sizes the calibration images, which load
    meanwhile. A process without torch calibrates in a forked child and runs ``meanwhile()``
    (what the command needs next: imports, kernels) during it. The key covers the weights'
    bytes, the model options, the calibration data and settings and the intvit version
    (``intvit.cache``). Commands without ``--no-cache``, and ``--no-cache``, always calibrate.
    """
    no_cache = getattr(args, "no_cache", True)
    spec = None if no_cache and config is not None else model_spec(args)
    config = config or spec.config
    if no_cache:
        return _calibrate(args, model, config, data, held_apart, meanwhile)
    from intvit.cache import cached, data_identity, program_key, weights_identity

    calib = getattr(args, "calib_data", None)
    key = program_key({
        "config": repr(spec.config), "weights": weights_identity(spec.weights, args.seed, _embedded(spec)),
        "data": data_identity(calib or data, BUILTIN_DATA), "calib_data": bool(calib), "held_apart": held_apart,
        "calib_size": args.calib_size, "method": args.calib_method, "batch_size": args.batch_size,
        "percentile": args.percentile if args.calib_method == "percentile" else None,
    })
    return cached(key, lambda: _calibrate(args, model, config, data, held_apart, meanwhile), spec.config)


def shape_program(args: argparse.Namespace) -> IntProgram:
    """The program a cycle-only run costs: ``--program``, else the model's shapes with nothing calibrated.

    Without ``--program`` no weights are read (only the checkpoint's architecture), no data and
    no float model is built: ``quant.ptq.shape_program`` assembles the program from the parameter
    shapes, without torch, in a fraction of a second. Cycles depend only on shapes and bit widths,
    so they equal a calibrated program's (tested on mnist and deit-tiny).
    """
    from intvit.quant.ptq import shape_program as program_of_shapes

    if getattr(args, "program", None):
        return build_program(args, load_model(args), data="")
    return program_of_shapes(model_spec(args).config)


def compile_model(args: argparse.Namespace, config, data: str, batch: int = 1):
    """``(program, compiled)``: ``--program`` (checked against the model) or the calibrated model,
    compiled for the accelerator ``config`` and ``batch`` images (``compile_batch``). The float
    model is built only when calibration runs (not for a cached program)."""
    if getattr(args, "program", None):
        program = build_program(args, load_model(args), data)
    else:
        program = calibrated_program(args, data, lambda: load_model(args))
    return program, compile_batch(program, config, batch)


def compile_batch(program: IntProgram, config, batch: int = 1):
    """``compiler.codegen.compile_program`` for ``batch`` images; a batch that the memory map cannot
    hold is refused naming ``--batch``, the option the user can change."""
    from intvit.compiler.codegen import compile_program

    try:
        return compile_program(program, config, batch)
    except IntVitError as exc:
        prefix = f"compile: batch {batch}:"
        if str(exc).startswith(prefix):
            raise IntVitError(f"--batch {batch}:{str(exc)[len(prefix):]}") from None
        raise


def quantized_test_images(program: IntProgram, data: str, count: int) -> tuple[list[np.ndarray], np.ndarray]:
    """The first ``count`` test images of ``data`` as the program's INT8 inputs (one per image) and their labels."""
    images, labels, _ = load_images(data, program.config, "test", count)
    if len(images) < count:
        raise IntVitError(f"{data}: the test split has {len(images)} images, not the {count} asked for")
    return [program.quantize_input(images[i:i + 1]) for i in range(count)], labels


def progress(iterable, desc: str, total: int | None = None, unit: str = "batch"):
    """A progress bar on stderr that stays out of the way of piped output."""
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False, disable=None, file=sys.stderr, unit=unit)


def write_json(data: dict, path: str | None) -> None:
    """JSON to ``path``, or to stdout for ``-``."""
    text = json.dumps(_finite(data), indent=2, default=_jsonable)
    if path in (None, "-"):
        print(text)
    else:
        write_text(path, text + "\n")


def _finite(value):
    # Strict JSON has no Infinity: a perfect SQNR is written as the string "inf".
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def _jsonable(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
