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
token_mean      x                            ``int_token_mean``: (B,N,D) -> (B,D) over tokens
                                             start.. (global average pooling), attr start
average         a, b                         ``int_average``: INT32 mean of two heads' logits
=============== ============================ ==============================================

File format: one ``.npz`` holding every constant plus the JSON manifest (ops, tensor
scales, model config, format version) as a UTF-8 byte array under ``__manifest__``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from intvit.quant.atomic import atomic_file, os_error_message
from intvit.quant.config import ViTConfig
from intvit.quant.errors import IntVitError
from intvit.quant.gelu import GELU_INPUT_BITS
from intvit.quant.layernorm import layernorm_divisors
from intvit.quant.matmul import check_accumulator
from intvit.quant.requant import check_add, check_dyadic

__all__ = ["FORMAT_VERSION", "OP_KINDS", "OP_SPECS", "REQUANT_BITS", "MAX_PROGRAM_BYTES", "Op", "TensorInfo",
           "IntProgram", "load_program", "check_program"]

# Version 2: the model config gained the checkpoint-derived fields (pooling, distillation token,
# qkv bias, GELU form, preprocessing) and the op set gained token_mean and average.
FORMAT_VERSION = 2
MANIFEST_KEY = "__manifest__"
MANIFEST_KEYS = ("format", "version", "config", "input_scale", "output", "calibration", "tensors", "ops", "constants")
# Uncompressed size a program file may declare: DeiT-Base's program holds about 90 MB.
MAX_PROGRAM_BYTES = 4 << 30
# Requantisation targets of a program: INT8 activations, the GELU unit's Q.10 input, Q.12 scores.
REQUANT_BITS = (8, GELU_INPUT_BITS, 32)
OP_KINDS = (
    "patchify", "matmul", "requant", "softmax", "gelu", "layernorm", "add",
    "concat_token", "split_heads", "merge_heads", "select_token", "token_mean", "average",
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
            elif op.kind in ("select_token", "token_mean"):
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
        """Write the program to ``path`` (any suffix), atomically: a failure leaves no partial file."""
        path = Path(path)
        text = json.dumps(self.manifest(), indent=1).encode()
        # Stored, not deflated: INT8 weights barely compress (DeiT-Tiny 5.48 MB deflated, 6.03 MB stored)
        # and deflating them took 0.26 s of a cold run against 0.02 s. A handle: np.savez would append
        # .npz to other suffixes.
        with atomic_file(path) as temp, open(temp, "wb") as handle:
            np.savez(handle, **{MANIFEST_KEY: np.frombuffer(text, dtype=np.uint8)}, **self.constants)
        return path


def load_program(path: str | Path) -> IntProgram:
    """Read a program written by ``IntProgram.save`` and check it with ``check_program``.

    Nothing in the file is trusted: every manifest key, type, number and shape is checked
    against the bounds the quantiser guarantees; every problem is one IntVitError naming the
    file and the field.
    """
    path = Path(path)
    try:
        if not path.is_file():
            raise IntVitError(f"{path}: no such program file")
        arrays = _read_archive(path)
    except OSError as exc:
        raise IntVitError(os_error_message(path, exc)) from None
    if MANIFEST_KEY not in arrays:
        raise IntVitError(f"{path}: not an intvit program (no manifest)")
    try:
        manifest = json.loads(arrays.pop(MANIFEST_KEY).tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IntVitError(f"{path}: corrupt manifest ({exc})") from None
    except RecursionError:
        raise IntVitError(f"{path}: corrupt manifest (nested too deeply)") from None
    if not isinstance(manifest, dict) or manifest.get("format") != "intvit-program":
        raise IntVitError(f"{path}: not an intvit program")
    if manifest.get("version") != FORMAT_VERSION:
        raise IntVitError(
            f"{path}: program format version {manifest.get('version')} is not supported "
            f"(this intvit reads version {FORMAT_VERSION}; run `intvit quantize` again to rebuild it)"
        )
    try:
        program = _program_from_manifest(manifest, arrays)
        check_program(program)
    except IntVitError as exc:
        raise IntVitError(f"{path}: {exc}") from None
    return program


def _read_archive(path: Path) -> dict[str, np.ndarray]:
    # IntVitError is a ValueError: the size check stays outside the handler of numpy's errors.
    size = None
    try:
        with zipfile.ZipFile(path) as archive:
            size = sum(info.file_size for info in archive.infolist())
    except zipfile.BadZipFile:
        pass                                  # np.load names the problem below
    if size is not None and size > MAX_PROGRAM_BYTES:
        raise IntVitError(f"{path}: holds {size:,} bytes uncompressed; a program is at most "
                          f"{MAX_PROGRAM_BYTES:,} bytes")
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, KeyError) as exc:
        raise IntVitError(f"{path}: not a readable intvit program (truncated or corrupt: {exc})") from None


def _as_tuple(kinds) -> tuple:
    return kinds if isinstance(kinds, tuple) else (kinds,)


def _get(mapping: dict, key: str, kinds: type | tuple[type, ...], where: str):
    """``mapping[key]`` if present and of one of ``kinds`` (a bool is never a number here)."""
    if key not in mapping:
        raise IntVitError(f"{where}: missing key {key!r}")
    value = mapping[key]
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in _as_tuple(kinds)):
        names = " or ".join("null" if k is type(None) else k.__name__ for k in _as_tuple(kinds))
        raise IntVitError(f"{where}: {key} must be {names}, not {value!r}")
    return value


def _exact_keys(mapping: dict, keys: tuple[str, ...], where: str) -> None:
    extra = sorted(set(mapping) - set(keys))
    if extra:
        raise IntVitError(f"{where}: unexpected key {extra[0]!r}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_scale(value) -> bool:
    """A finite positive normal float: a real scale the quantiser can have produced."""
    return _is_number(value) and math.isfinite(value) and value >= np.finfo(np.float64).tiny


_JSON_KINDS = {"bool": "true or false", "int": "an integer", "float": "a finite number", "str": "a string"}


def _json_kind(annotation: str) -> str:
    """What a ViTConfig field annotation (a string) asks of a JSON value, in words."""
    if annotation.startswith("tuple["):
        return f"a list of {_json_kind(annotation[6:].split(',')[0]).split(' ', 1)[1]}s"
    return _JSON_KINDS.get(annotation, "a string")


def _json_value_ok(value, annotation: str) -> bool:
    if annotation.startswith("tuple["):
        return isinstance(value, list) and all(_json_value_ok(v, annotation[6:].split(",")[0]) for v in value)
    if annotation == "bool":
        return isinstance(value, bool)
    if annotation == "int":
        return type(value) is int
    if annotation == "float":
        return _is_number(value) and math.isfinite(value)
    return isinstance(value, str)


def _config(data: dict) -> ViTConfig:
    fields = {f.name: str(f.type) for f in dataclasses.fields(ViTConfig)}
    _exact_keys(data, tuple(fields), "config")
    for key, annotation in fields.items():
        if key not in data:
            raise IntVitError(f"config: missing key {key!r}")
        if not _json_value_ok(data[key], annotation):
            raise IntVitError(f"config.{key} must be {_json_kind(annotation)}, not {data[key]!r}")
    try:
        return ViTConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
    except IntVitError as exc:
        raise IntVitError(f"config: {exc}") from None


def _op(index: int, data) -> Op:
    where = f"ops[{index}]"
    if not isinstance(data, dict):
        raise IntVitError(f"{where} must be an object, not {data!r}")
    _exact_keys(data, ("kind", "name", "inputs", "outputs", "attrs"), where)
    kind, name = _get(data, "kind", str, where), _get(data, "name", str, where)
    inputs, outputs = (_get(data, key, list, f"op {name!r}") for key in ("inputs", "outputs"))
    if not all(isinstance(n, str) for n in inputs + outputs):
        raise IntVitError(f"op {name!r}: inputs and outputs must be tensor names")
    return Op(kind, name, tuple(inputs), tuple(outputs), _get(data, "attrs", dict, f"op {name!r}"))


def _tensor_info(name: str, data) -> TensorInfo:
    where = f"tensors[{name!r}]"
    if not isinstance(data, dict):
        raise IntVitError(f"{where} must be an object, not {data!r}")
    _exact_keys(data, ("scale", "bits", "float_name"), where)
    return TensorInfo(_get(data, "scale", (int, float, type(None)), where), _get(data, "bits", int, where),
                      _get(data, "float_name", (str, type(None)), where))


def _program_from_manifest(manifest: dict, arrays: dict[str, np.ndarray]) -> IntProgram:
    _exact_keys(manifest, MANIFEST_KEYS, "manifest")
    declared = _get(manifest, "constants", dict, "manifest")
    for name, entry in declared.items():
        if (not isinstance(entry, list) or len(entry) != 2 or not isinstance(entry[0], str)
                or not isinstance(entry[1], list) or not all(type(n) is int for n in entry[1])):
            raise IntVitError(f"constants[{name!r}] must be [dtype, shape], not {entry!r}")
        dtype, shape = entry
        if name not in arrays:
            raise IntVitError(f"constant {name!r} is missing")
        if str(arrays[name].dtype) != dtype or list(arrays[name].shape) != shape:
            raise IntVitError(f"constant {name!r} is {arrays[name].dtype}{list(arrays[name].shape)}, "
                              f"manifest says {dtype}{shape}")
    for name in arrays:
        if name not in declared:
            raise IntVitError(f"array {name!r} is not in the manifest")
    ops = [_op(i, data) for i, data in enumerate(_get(manifest, "ops", list, "manifest"))]
    tensors = {name: _tensor_info(name, info) for name, info in _get(manifest, "tensors", dict, "manifest").items()}
    return IntProgram(
        config=_config(_get(manifest, "config", dict, "manifest")),
        ops=ops,
        constants=arrays,
        tensors=tensors,
        input_scale=_get(manifest, "input_scale", (int, float), "manifest"),
        output=_get(manifest, "output", str, "manifest"),
        calibration=_get(manifest, "calibration", dict, "manifest") if "calibration" in manifest else {},
    )


# ------------------------------------------------------------------------------- semantic check
class _OpSpec(NamedTuple):
    """One op kind: operand count range, outputs, attributes, operands that must be constants."""

    inputs: tuple[int, int]
    outputs: int
    attrs: tuple[str, ...]
    constants: dict[int, type]            # operand position -> required dtype
    optional_attrs: tuple[str, ...] = ()


OP_SPECS: dict[str, _OpSpec] = {
    "patchify": _OpSpec((1, 1), 1, ("patch",), {}),
    "matmul": _OpSpec((2, 3), 1, (), {2: np.int32}, ("transpose_b",)),
    "requant": _OpSpec((3, 3), 1, ("bits",), {1: np.int32, 2: np.int8}),
    "softmax": _OpSpec((1, 1), 1, (), {}),
    "gelu": _OpSpec((1, 1), 1, (), {}),
    "layernorm": _OpSpec((5, 5), 1, ("mean_multiplier", "mean_shift", "var_multiplier", "var_shift"),
                         {1: np.int8, 2: np.int32, 3: np.int32, 4: np.int8}),
    "add": _OpSpec((2, 2), 1, ("m_a", "m_b", "shift"), {}),
    "concat_token": _OpSpec((2, 2), 1, (), {1: np.int8}),
    "split_heads": _OpSpec((1, 1), 3, ("heads",), {}),
    "merge_heads": _OpSpec((1, 1), 1, (), {}),
    "select_token": _OpSpec((1, 1), 1, ("index",), {}),
    "token_mean": _OpSpec((1, 1), 1, ("start",), {}),
    "average": _OpSpec((2, 2), 1, (), {}),
}


def check_program(program: IntProgram) -> None:
    """Raise IntVitError unless ``program`` keeps every bound the quantiser guarantees.

    Checked: each op's operand count, attributes (all present, none unknown) and operand
    kinds; every operand written before use and every tensor written once; shapes and bit
    widths derived op by op from the config (patch size, heads, token count, widths), so a
    weight of the wrong shape or an attribute that disagrees with the config is refused;
    requantisation pairs (``quant.requant.check_dyadic``), residual-add triples
    (``check_add``), LayerNorm divisors (``layernorm_divisors``) and INT32 accumulator
    headroom (``check_accumulator``); scales finite and positive; INT32 logits of shape
    (batch, num_classes) as the output. Messages name the op or field, not the file.
    """
    if not _is_scale(program.input_scale):
        raise IntVitError(f"input_scale must be a finite positive number, not {program.input_scale!r}")
    c = program.config
    env = {"input": ((1, c.in_chans, c.img_size, c.img_size), 8)}       # tensor -> (shape at batch 1, bits)
    op_names = set()
    for op in program.ops:
        if op.name in op_names:
            raise IntVitError(f"op {op.name!r} appears twice")
        op_names.add(op.name)
        for name, value in zip(op.outputs, _check_op(op, program, env)):
            if name in env or name in program.constants:
                raise IntVitError(f"op {op.name!r}: output {name!r} is written twice")
            env[name] = value
    if program.output not in env:
        raise IntVitError(f"output {program.output!r} is not a tensor of the program")
    if env[program.output] != ((1, c.num_classes), 32):
        raise IntVitError(f"output {program.output!r} is {_describe(env[program.output])}, "
                          f"not INT32 logits of shape (batch, {c.num_classes})")
    for name in env:
        if name not in program.tensors:
            raise IntVitError(f"tensors: missing entry for {name!r}")
    for name, info in program.tensors.items():
        if name not in env:
            raise IntVitError(f"tensors[{name!r}]: no op writes this tensor")
        if info.bits != env[name][1]:
            raise IntVitError(f"tensors[{name!r}].bits is {info.bits}, but its op writes {env[name][1]} bits")
        if info.scale is not None and not _is_scale(info.scale):
            raise IntVitError(f"tensors[{name!r}].scale must be a finite positive number, not {info.scale!r}")
    if program.tensors[program.output].scale is None:
        raise IntVitError(f"tensors[{program.output!r}].scale must be a number: the logits' real scale")


def _describe(value) -> str:
    shape, bits = value
    return f"{bits}-bit {shape}"


def _check_op(op: Op, program: IntProgram, env: dict) -> list[tuple[tuple[int, ...], int]]:
    """Check one op against ``env``; the shapes (batch 1) and bit widths of its outputs."""
    where = f"op {op.name!r}"
    spec = OP_SPECS[op.kind]
    low, high = spec.inputs
    if not low <= len(op.inputs) <= high or len(op.outputs) != spec.outputs:
        count = str(low) if low == high else f"{low} or {high}"
        raise IntVitError(f"{where}: {op.kind} takes {count} operands and writes {spec.outputs}, "
                          f"not {len(op.inputs)} and {len(op.outputs)}")
    for key in spec.attrs:
        if key not in op.attrs:
            raise IntVitError(f"{where}: missing attribute {key}")
    for key in op.attrs:
        if key not in spec.attrs + spec.optional_attrs:
            raise IntVitError(f"{where}: unexpected attribute {key}")
    operands = []
    for position, name in enumerate(op.inputs):
        if position in spec.constants or (position > 0 and name in program.constants):
            if name not in program.constants:
                raise IntVitError(f"{where}: operand {name!r} must be a constant")
            value = program.constants[name]
            dtype = np.dtype(spec.constants.get(position, np.int8))
            if value.dtype != dtype:
                raise IntVitError(f"{where}: constant {name!r} must be {dtype}, not {value.dtype}")
            operands.append((value.shape, dtype.itemsize * 8))
        elif name in env:
            operands.append(env[name])
        else:
            raise IntVitError(f"{where}: operand {name!r} is not written by an earlier op")
    return _CHECKS[op.kind](op, where, program.config, operands, [program.constants.get(n) for n in op.inputs])


def _need(condition: bool, where: str, message: str) -> None:
    if not condition:
        raise IntVitError(f"{where}: {message}")


def _int8_tensor(where: str, operand, ndim: int | tuple[int, ...], what: str = "operand") -> tuple[int, ...]:
    shape, bits = operand
    _need(bits == 8, where, f"{what} must be INT8, not {bits}-bit")
    _need(len(shape) in _as_tuple(ndim), where, f"{what} must have {ndim} dimensions, not shape {shape}")
    return shape


def _check_patchify(op, where, c, operands, constants):
    patch = op.attrs["patch"]
    b, chans, h, w = _int8_tensor(where, operands[0], 4, "image")
    _need(patch == c.patch_size, where, f"patch must be the config's patch_size {c.patch_size}, not {patch}")
    return [((b, (h // patch) * (w // patch), chans * patch * patch), 8)]


def _check_matmul(op, where, c, operands, constants):
    transpose = op.attrs.get("transpose_b", 0)
    _need(transpose in (0, 1), where, f"transpose_b must be 0 or 1, not {transpose}")
    a = _int8_tensor(where, operands[0], (2, 3, 4), "left operand")
    weight = constants[1] is not None
    b = _int8_tensor(where, operands[1], 2 if weight else len(a), "right operand")
    _need(weight or b[:-2] == a[:-2], where, f"operands {a} and {b} differ in their leading dimensions")
    k, n = (b[-1], b[-2]) if transpose else (b[-2], b[-1])
    _need(a[-1] == k, where, f"inner dimensions differ ({a} @ {b}{' transposed' if transpose else ''})")
    if weight:
        widths = sorted({c.patch_dim, c.embed_dim, 3 * c.embed_dim, c.mlp_dim, c.num_classes})
        _need(k in widths and n in widths, where,
              f"weight {b} does not fit the config (its widths are {', '.join(map(str, widths))})")
    bias = constants[2] if len(operands) == 3 else None
    _need(bias is None or bias.shape == (n,), where, f"bias must have shape ({n},), not {getattr(bias, 'shape', None)}")
    check_accumulator(k, bias, where)
    return [((*a[:-1], n), 32)]


def _check_scales(where, x_shape, multiplier, shift):
    _need(multiplier.shape == shift.shape and multiplier.shape in ((), (1,), x_shape[-1:]), where,
          f"multiplier {multiplier.shape} and shift {shift.shape} must be one per channel ({x_shape[-1]},) or one")
    check_dyadic(multiplier, shift, where)


def _check_requant(op, where, c, operands, constants):
    shape, bits = operands[0]
    _need(bits <= 32, where, f"input must be at most 32-bit, not {bits}-bit")
    _check_scales(where, shape, constants[1], constants[2])
    _need(op.attrs["bits"] in REQUANT_BITS, where,
          f"bits must be one of {', '.join(map(str, REQUANT_BITS))}, not {op.attrs['bits']}")
    return [(shape, op.attrs["bits"])]


def _check_softmax(op, where, c, operands, constants):
    shape, bits = operands[0]
    _need(bits == 32 and len(shape) == 4 and shape[-1] == c.num_tokens, where,
          f"scores must be 32-bit rows of {c.num_tokens} tokens, not {_describe(operands[0])}")
    return [(shape, 8)]


def _check_gelu(op, where, c, operands, constants):
    shape, bits = operands[0]
    _need(bits == GELU_INPUT_BITS and shape[-1] == c.mlp_dim, where,
          f"input must be {GELU_INPUT_BITS}-bit rows of mlp_dim {c.mlp_dim}, not {_describe(operands[0])}")
    return [(shape, 32)]


def _check_layernorm(op, where, c, operands, constants):
    shape = _int8_tensor(where, operands[0], (2, 3))
    width = shape[-1]
    _need(width == c.embed_dim, where, f"rows must be embed_dim {c.embed_dim} wide, not {width}")
    for name, value in zip(("gamma", "beta", "multiplier"), constants[1:4]):
        _need(value.shape == (width,), where, f"{name} must have shape ({width},), not {value.shape}")
    _check_scales(where, shape, constants[3], constants[4])
    for key, expected in zip(OP_SPECS["layernorm"].attrs, layernorm_divisors(width)):
        _need(op.attrs[key] == expected, where, f"{key} must be {expected} for rows of {width}, not {op.attrs[key]}")
    return [(shape, 8)]


def _check_add(op, where, c, operands, constants):
    a = _int8_tensor(where, operands[0], 3)
    b = _int8_tensor(where, operands[1], (2, 3))
    _need(b in (a, a[1:]), where, f"operand shapes {a} and {b} differ")
    check_add(op.attrs["m_a"], op.attrs["m_b"], op.attrs["shift"], where)
    return [(a, 8)]


def _check_concat_token(op, where, c, operands, constants):
    b, n, d = _int8_tensor(where, operands[0], 3)
    _need(d == c.embed_dim, where, f"tokens must be embed_dim {c.embed_dim} wide, not {d}")
    _need(constants[1].shape in ((d,), (1, d)), where, f"token must have shape ({d},), not {constants[1].shape}")
    return [((b, n + 1, d), 8)]


def _check_split_heads(op, where, c, operands, constants):
    heads = op.attrs["heads"]
    b, n, width = _int8_tensor(where, operands[0], 3)
    _need(heads == c.num_heads, where, f"heads must be the config's num_heads {c.num_heads}, not {heads}")
    _need(width == 3 * c.embed_dim, where, f"input must be 3 x embed_dim = {3 * c.embed_dim} wide, not {width}")
    return [((b, heads, n, c.head_dim), 8)] * 3


def _check_merge_heads(op, where, c, operands, constants):
    b, h, n, d = _int8_tensor(where, operands[0], 4)
    return [((b, n, h * d), 8)]


def _check_select_token(op, where, c, operands, constants):
    b, n, d = _int8_tensor(where, operands[0], 3)
    index = op.attrs["index"]
    _need(0 <= index < n, where, f"index must be in [0, {n}), not {index}")
    return [((b, d), 8)]


def _check_token_mean(op, where, c, operands, constants):
    b, n, d = _int8_tensor(where, operands[0], 3)
    start = op.attrs["start"]
    _need(start == c.num_prefix_tokens and start < n, where,
          f"start must be the config's {c.num_prefix_tokens} prefix tokens, not {start}")
    return [((b, d), 8)]


def _check_average(op, where, c, operands, constants):
    _need(operands[0] == operands[1] and operands[0][1] == 32, where,
          f"operands must be two INT32 tensors of one shape, not {_describe(operands[0])} and "
          f"{_describe(operands[1])}")
    return [operands[0]]


_CHECKS = {
    "patchify": _check_patchify, "matmul": _check_matmul, "requant": _check_requant, "softmax": _check_softmax,
    "gelu": _check_gelu, "layernorm": _check_layernorm, "add": _check_add, "concat_token": _check_concat_token,
    "split_heads": _check_split_heads, "merge_heads": _check_merge_heads, "select_token": _check_select_token,
    "token_mean": _check_token_mean, "average": _check_average,
}
