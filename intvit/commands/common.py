"""Options and loaders that several subcommands share: which model, which weights, which data."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from intvit.quant.calibrate import CALIBRATION_METHODS
from intvit.quant.config import PRESETS, ViTConfig, get_config
from intvit.quant.atomic import check_output_file, write_text
from intvit.quant.errors import IntVitError
from intvit.quant.model import ViT
from intvit.quant.program import IntProgram, load_program

__all__ = [
    "add_model_arguments", "add_calibration_arguments", "load_model", "load_images", "build_program",
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
    parser.add_argument("--model", default=DEFAULT_MODEL, choices=sorted(PRESETS),
                        help="model shape (default: %(default)s, the embedded MNIST ViT)")
    parser.add_argument("--weights", metavar="FILE",
                        help="checkpoint: timm/DeiT .pth or .safetensors, Hugging Face ViT safetensors, or "
                             "intvit's own .safetensors+.json (default: embedded weights for mnist, "
                             "seeded random weights otherwise)")
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


def load_model(args: argparse.Namespace) -> ViT:
    """The float model the options name, in eval mode."""
    from intvit.quant.checkpoint import load_checkpoint, load_embedded, load_weights

    config = get_config(args.model)
    if args.weights:
        path = Path(args.weights)
        if not path.is_file():
            raise IntVitError(f"{path}: no such checkpoint file")
        if path.suffix == ".safetensors" and path.with_suffix(".json").is_file():
            model = load_weights(path)
            if args.model != DEFAULT_MODEL and model.config.name != config.name:
                raise IntVitError(f"{path}: weights are for model {model.config.name!r}, not {config.name!r}")
            return model.eval()
        return load_checkpoint(path, config).eval()
    if args.model == DEFAULT_MODEL:
        return load_embedded().eval()
    torch.manual_seed(args.seed)
    return ViT(config).eval()


def load_images(spec: str, config: ViTConfig, split: str, limit: int | None):
    """Normalised float images, labels and class names from ``mnist``, ``digits`` or a directory."""
    from intvit.quant.data import load_dataset, normalize

    images, labels, classes = load_dataset(spec, config, split=split, limit=limit)
    return normalize(images, config), labels, classes


def build_program(args: argparse.Namespace, model: ViT, data: str) -> IntProgram:
    """Load ``--program`` (checked against the model) or quantise the model on calibration images."""
    from intvit.quant.ptq import quantize_model

    if getattr(args, "program", None):
        program = load_program(args.program)
        if program.config != model.config:
            raise IntVitError(f"{args.program}: program is for model {program.config.name!r} "
                              f"({program.config.embed_dim}-wide, depth {program.config.depth}), "
                              f"not the {model.config.name!r} model given")
        return program
    # Built-in sets calibrate on their train split; anything else names a directory, which has one split
    # (and a path that is not a directory gets load_image_folder's "no such directory").
    split = "train" if data in BUILTIN_DATA else "all"
    images, _, _ = load_images(data, model.config, split, args.calib_size)
    return quantize_model(model, images, method=args.calib_method, percentile=args.percentile,
                          batch_size=args.batch_size,
                          progress=lambda it: progress(it, "calibrate", -(-len(images) // args.batch_size)))


def progress(iterable, desc: str, total: int | None = None, unit: str = "batch"):
    """A progress bar on stderr that stays out of the way of piped output."""
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
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
