"""The integer program: an ordered list of integer ops with their constants, and its file format.

A program is what ``quant.ptq.quantize_model`` produces and what the golden executor
(``quant.executor``), the simulator (``sim``) and the RTL tests consume. It holds only
integers, except for three kinds of float metadata that never enter integer inference:
the input scale (to quantise images on the host), the output scale (to read logits as
floats) and each tensor's real scale (for reports such as per-layer SQNR).

Op kinds and their operands (``inputs`` name tensors or constants):

=============== ============================ ==============================================
kind            inputs                       semantics
=============== ============================ ==============================================
patchify        x                            (B,C,H,W) int8 -> (B, patches, C*p*p), attr patch
matmul          a, b[, bias]                 ``int_matmul``; attr transpose_b
requant         x, multiplier, shift         ``requantize``; attr bits
softmax         x                            ``int_softmax`` (Q.12 -> int8 Q.7)
gelu            x                            ``int_gelu`` (Q.10 -> Q.21)
layernorm       x, gamma, beta, mult, shift  ``int_layernorm``; attrs the dyadic divisors
add             a, b                         ``int_add``; attrs m_a, m_b, shift
concat_token    x, token                     prepend a (1, D) token to every image
split_heads     x                            (B,N,3D) -> q, k, v as (B,H,N,d); attr heads
merge_heads     x                            (B,H,N,d) -> (B,N,H*d)
select_token    x                            (B,N,D) -> (B,D), attr index
=============== ============================ ==============================================

File format: one ``.npz`` holding every constant plus the JSON manifest (ops, tensor
scales, model config, format version) as a UTF-8 byte array under ``__manifest__``.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from intvit.quant.config import ViTConfig
from intvit.quant.errors import IntVitError

__all__ = ["FORMAT_VERSION", "OP_KINDS", "Op", "TensorInfo", "IntProgram", "load_program"]

FORMAT_VERSION = 1
MANIFEST_KEY = "__manifest__"
OP_KINDS = (
    "patchify", "matmul", "requant", "softmax", "gelu", "layernorm", "add",
    "concat_token", "split_heads", "merge_heads", "select_token",
)
INTEGER_DTYPES = (np.int8, np.int16, np.int32, np.int64)


@dataclass(frozen=True)
class Op:
    """One integer operation. ``attrs`` hold integers only."""

    kind: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in OP_KINDS:
            raise IntVitError(f"op {self.name!r}: unknown kind {self.kind!r}")
        for key, value in self.attrs.items():
            if not isinstance(value, int) or isinstance(value, bool):
                raise IntVitError(f"op {self.name!r}: attribute {key} must be an integer, not {value!r}")

    @property
    def output(self) -> str:
        return self.outputs[0]


@dataclass(frozen=True)
class TensorInfo:
    """Real scale of an integer tensor (``real = int * scale``) and the float activation it stands for."""

    scale: float
    bits: int
    float_name: str | None = None


@dataclass
class IntProgram:
    """An integer ViT: ordered ops, integer constants, and the scales needed at its two ends.

    Attributes
    ----------
    config : ViTConfig
    ops : list of Op
    constants : dict of name -> integer ndarray
    tensors : dict of name -> TensorInfo, for every tensor an op produces (and ``input``)
    input_scale : float
        Images (already normalised) become ``clip(round(x / input_scale), -128, 127)``.
    output : str
        Name of the INT32 logits tensor; its real value is ``logits * tensors[output].scale``.
    """

    config: ViTConfig
    ops: list[Op]
    constants: dict[str, np.ndarray]
    tensors: dict[str, TensorInfo]
    input_scale: float
    output: str = "logits"
    calibration: dict = field(default_factory=dict)

    def __post_init__(self):
        for name, value in self.constants.items():
            if value.dtype not in INTEGER_DTYPES:
                raise IntVitError(f"constant {name!r} has dtype {value.dtype}; the program holds integers only")

    def quantize_input(self, images: np.ndarray) -> np.ndarray:
        """Normalised float images (B, C, H, W) -> INT8: the last float step before integer inference."""
        c = self.config
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1:] != (c.in_chans, c.img_size, c.img_size):
            raise IntVitError(
                f"images must be (batch, {c.in_chans}, {c.img_size}, {c.img_size}) for model "
                f"{c.name!r}, got {tuple(images.shape)}"
            )
        return np.clip(np.rint(images / self.input_scale), -128, 127).astype(np.int8)

    def matmuls(self) -> list[Op]:
        return [op for op in self.ops if op.kind == "matmul"]

    def tensor_shapes(self, batch: int = 1) -> dict[str, tuple[int, ...]]:
        """Static shape of every tensor and constant for a batch of ``batch`` images, without running."""
        c = self.config
        shapes = {name: tuple(value.shape) for name, value in self.constants.items()}
        shapes["input"] = (batch, c.in_chans, c.img_size, c.img_size)
        for op in self.ops:
            x = shapes[op.inputs[0]]
            if op.kind == "patchify":
                p = op.attrs["patch"]
                out = [(x[0], (x[2] // p) * (x[3] // p), x[1] * p * p)]
            elif op.kind == "matmul":
                b = shapes[op.inputs[1]]
                out = [(*x[:-1], b[-2] if op.attrs.get("transpose_b") else b[-1])]
            elif op.kind == "concat_token":
                out = [(x[0], x[1] + 1, x[2])]
            elif op.kind == "split_heads":
                h = op.attrs["heads"]
                out = [(x[0], h, x[1], x[2] // (3 * h))] * 3
            elif op.kind == "merge_heads":
                out = [(x[0], x[2], x[1] * x[3])]
            elif op.kind == "select_token":
                out = [(x[0], x[2])]
            else:                                   # element-wise: requant, softmax, gelu, layernorm, add
                out = [x]
            shapes.update(zip(op.outputs, out))
        return shapes

    # ----------------------------------------------------------------- file format
    def manifest(self) -> dict:
        return {
            "format": "intvit-program",
            "version": FORMAT_VERSION,
            "config": dataclasses.asdict(self.config),
            "input_scale": self.input_scale,
            "output": self.output,
            "calibration": self.calibration,
            "tensors": {name: dataclasses.asdict(info) for name, info in self.tensors.items()},
            "ops": [
                {"kind": op.kind, "name": op.name, "inputs": list(op.inputs),
                 "outputs": list(op.outputs), "attrs": op.attrs}
                for op in self.ops
            ],
            "constants": {name: [str(v.dtype), list(v.shape)] for name, v in self.constants.items()},
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        text = json.dumps(self.manifest(), indent=1).encode()
        with open(path, "wb") as handle:   # np.savez would append .npz to other suffixes
            np.savez_compressed(handle, **{MANIFEST_KEY: np.frombuffer(text, dtype=np.uint8)}, **self.constants)
        return path


def load_program(path: str | Path) -> IntProgram:
    """Read a program written by ``IntProgram.save``; every problem is one IntVitError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise IntVitError(f"{path}: no such program file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise IntVitError(f"{path}: not a readable intvit program (truncated or corrupt: {exc})") from None
    if MANIFEST_KEY not in arrays:
        raise IntVitError(f"{path}: not an intvit program (no manifest)")
    try:
        manifest = json.loads(arrays.pop(MANIFEST_KEY).tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IntVitError(f"{path}: corrupt manifest ({exc})") from None
    if manifest.get("format") != "intvit-program":
        raise IntVitError(f"{path}: not an intvit program")
    if manifest.get("version") != FORMAT_VERSION:
        raise IntVitError(
            f"{path}: program format version {manifest.get('version')} is not supported "
            f"(this intvit reads version {FORMAT_VERSION})"
        )
    for name, (dtype, shape) in manifest["constants"].items():
        if name not in arrays:
            raise IntVitError(f"{path}: constant {name!r} is missing")
        if str(arrays[name].dtype) != dtype or list(arrays[name].shape) != shape:
            raise IntVitError(f"{path}: constant {name!r} is {arrays[name].dtype}{list(arrays[name].shape)}, "
                              f"manifest says {dtype}{shape}")
    config = manifest["config"]
    config = ViTConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
    return IntProgram(
        config=config,
        ops=[Op(o["kind"], o["name"], tuple(o["inputs"]), tuple(o["outputs"]), o["attrs"]) for o in manifest["ops"]],
        constants=arrays,
        tensors={name: TensorInfo(**info) for name, info in manifest["tensors"].items()},
        input_scale=float(manifest["input_scale"]),
        output=manifest["output"],
        calibration=manifest.get("calibration", {}),
    )
