"""Import real ViT checkpoints from local files, and save/load our own weights.

Accepted layouts, detected from the keys:

* timm ``VisionTransformer`` / DeiT state dicts, from ``.pth``/``.pt``/``.bin`` (read with
  ``torch.load(weights_only=True)``; a dict holding the weights under ``model`` or
  ``state_dict``, as DeiT's releases do, is unwrapped) or ``.safetensors``.
* Hugging Face ``ViTForImageClassification`` safetensors/``.bin`` (``vit.embeddings...``,
  ``vit.encoder.layer.N...`` as ``save_pretrained`` writes them, or transformers 5's in-memory
  ``vit.layers.N...``, ``classifier``), mapped onto timm names with q, k and v concatenated
  into ``qkv``.

Every tensor must be floating point and finite; anything else is refused naming the tensor.
Features of the ViT family that intvit does not run (LayerScale, register tokens, attention
pooling, ...) are refused by :func:`refuse_unsupported` with one line naming the feature.
:func:`infer_config` reads what the shapes fix; :mod:`quant.architecture` adds what config
files, presets and options say.

Our own weights (:func:`save_weights`) are a timm-layout safetensors file plus a JSON sidecar
holding the :class:`~quant.config.ViTConfig` fields, so :func:`load_weights` needs no preset.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from intvit.quant.config import ViTConfig
from intvit.quant.errors import IntVitError
from intvit.quant.model import ViT

__all__ = [
    "EMBEDDED_WEIGHTS",
    "read_state_dict",
    "read_raw_state_dict",
    "is_hugging_face",
    "refuse_unsupported",
    "read_sidecar",
    "hf_to_timm",
    "infer_config",
    "check_state_dict",
    "load_checkpoint",
    "save_weights",
    "load_weights",
    "load_embedded",
]

EMBEDDED_WEIGHTS = Path(__file__).parent / "weights" / "mnist.safetensors"
TORCH_SUFFIXES = (".pth", ".pt", ".bin")
# Wrapper keys under which training scripts (DeiT's among them) store the model weights.
WRAPPER_KEYS = ("model", "state_dict")
HF_MARKER = "vit.embeddings.cls_token"
# Hugging Face ViT names (after "vit.encoder.layer.N.") -> timm names (after "blocks.N.").
HF_BLOCK_NAMES = {
    "attention.output.dense": "attn.proj",
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}
HF_TOP_NAMES = {
    "vit.embeddings.cls_token": "cls_token",
    "vit.embeddings.position_embeddings": "pos_embed",
    "vit.embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "vit.embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "vit.layernorm.weight": "norm.weight",
    "vit.layernorm.bias": "norm.bias",
    "classifier.weight": "head.weight",
    "classifier.bias": "head.bias",
}
# transformers 5 names the same tensors differently in memory (save_pretrained converts back).
HF5_BLOCK_NAMES = {
    "attention.o_proj": "attn.proj",
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
HF_LAYER = re.compile(r"vit\.encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")
HF5_LAYER = re.compile(r"vit\.layers\.(\d+)\.(.+)\.(weight|bias)$")
HF_QKV = ("attention.attention.query", "attention.attention.key", "attention.attention.value")
HF5_QKV = ("attention.q_proj", "attention.k_proj", "attention.v_proj")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# Keys of timm/HF ViT variants that intvit does not run, each with the feature it stands for.
UNSUPPORTED_KEYS = (
    (re.compile(r"blocks\.\d+\.ls[12]\.(gamma|weight)$"), "LayerScale (timm init_values)"),
    (re.compile(r"reg_token$"), "register tokens (timm reg_tokens)"),
    (re.compile(r"norm_pre\.(weight|bias)$"), "a norm before the blocks (timm pre_norm)"),
    (re.compile(r"attn_pool\."), "attention pooling (timm global_pool='map')"),
    (re.compile(r"blocks\.\d+\.attn\.[qk]_norm\."), "q/k normalisation (timm qk_norm)"),
    (re.compile(r"blocks\.\d+\.attn\.norm\."), "a norm inside attention (timm scale_attn_norm)"),
    (re.compile(r"blocks\.\d+\.mlp\.(norm|fc1_g|fc1_x)\."), "a gated or normalised MLP (timm SwiGLU/scale_mlp_norm)"),
    (re.compile(r"(vit|deit)\.pooler\."), "the Hugging Face pooler (a ViTModel, not ViTForImageClassification)"),
    (re.compile(r"deit\.embeddings\."), "Hugging Face DeiT checkpoints (deit.*); save the timm model instead"),
    (re.compile(r"patch_embed\.norm\."), "a norm after the patch embedding (timm embed_norm)"),
)
BLOCK_KEY = re.compile(r"blocks\.(\d+)\.")
# Keys that exist in the sidecar JSON but are tuples in ViTConfig.
TUPLE_FIELDS = ("mean", "std", "resize", "labels")
MAX_ERROR_CHARS = 120


def _load_raw(path: Path) -> dict:
    if not path.is_file():
        raise IntVitError(f"{path}: no such checkpoint file")
    try:
        if path.suffix == ".safetensors":
            return load_file(path)
        if path.suffix in TORCH_SUFFIXES:
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise IntVitError(
            f"{path}: holds Python objects besides tensors, which weights_only loading refuses; "
            "save just the state dict"
        ) from None
    # A truncated or foreign file makes torch.load / safetensors fail with many exception types.
    except Exception as exc:
        reason = str(exc).splitlines()[0][:MAX_ERROR_CHARS] if str(exc) else exc.__class__.__name__
        raise IntVitError(f"{path}: unreadable or truncated checkpoint ({reason})") from None
    raise IntVitError(f"{path}: unknown checkpoint extension {path.suffix!r}; use .safetensors, .pth, .pt or .bin")


def hf_to_timm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a Hugging Face ``ViTForImageClassification`` state dict to timm names.

    Keys that have no timm counterpart keep their name, so that the key check reports them.
    """
    v5 = any(HF5_LAYER.match(key) for key in state_dict)
    layer_re, block_names, qkv_names = (HF5_LAYER, HF5_BLOCK_NAMES, HF5_QKV) if v5 else \
        (HF_LAYER, HF_BLOCK_NAMES, HF_QKV)
    prefix = "vit.layers" if v5 else "vit.encoder.layer"
    out, qkv_parts = {}, {}
    for key, tensor in state_dict.items():
        match = layer_re.match(key)
        if key in HF_TOP_NAMES:
            out[HF_TOP_NAMES[key]] = tensor
        elif match and match[2] in block_names:
            out[f"blocks.{match[1]}.{block_names[match[2]]}.{match[3]}"] = tensor
        elif match and match[2] in qkv_names:
            qkv_parts[(match[1], match[3], match[2])] = tensor
        else:
            out[key] = tensor
    for layer, kind in sorted({(layer, kind) for layer, kind, _ in qkv_parts}):
        parts = [qkv_parts.get((layer, kind, name)) for name in qkv_names]
        missing = [name for name, part in zip(qkv_names, parts) if part is None]
        if missing:
            raise IntVitError(f"missing key '{prefix}.{layer}.{missing[0]}.{kind}'")
        # timm's qkv rows are q|k|v, each with heads contiguous, exactly HF's three outputs stacked.
        out[f"blocks.{layer}.attn.qkv.{kind}"] = torch.cat(parts, dim=0)
    return out


def read_state_dict(path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a timm-named state dict (float tensors, CPU).

    Parameters
    ----------
    path : str or Path
        ``.safetensors``, ``.pth``, ``.pt`` or ``.bin`` file in timm, DeiT or Hugging Face layout.
    """
    raw = read_raw_state_dict(path)
    return hf_to_timm(raw) if is_hugging_face(raw) else raw


def read_raw_state_dict(path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file under their own names, checked to be finite floats.

    Parameters
    ----------
    path : str or Path
        ``.safetensors``, ``.pth``, ``.pt`` or ``.bin`` file; a dict that holds the weights under
        ``model`` or ``state_dict`` is unwrapped.
    """
    path = Path(path)
    raw = _load_raw(path)
    for wrapper in WRAPPER_KEYS:
        if isinstance(raw, dict) and isinstance(raw.get(wrapper), dict):
            raw = raw[wrapper]
            break
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise IntVitError(f"{path}: not a state dict (expected a mapping of names to tensors)")
    for key, tensor in raw.items():
        if tensor.dtype not in FLOAT_DTYPES:
            raise IntVitError(f"{path}: tensor {key!r} is {str(tensor.dtype).removeprefix('torch.')}; "
                              "weights must be floating point (float16, bfloat16, float32 or float64)")
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            raise IntVitError(f"{path}: tensor {key!r} has {bad} non-finite values (NaN or infinity)")
    return dict(raw)


def is_hugging_face(state_dict: dict) -> bool:
    """Whether the keys are those of a Hugging Face ViT (any transformers version)."""
    return HF_MARKER in state_dict


def refuse_unsupported(state_dict: dict[str, torch.Tensor], source) -> None:
    """Raise IntVitError naming the first ViT-family feature in ``state_dict`` that intvit does not run.

    Parameters
    ----------
    state_dict : dict
        timm-named tensors (after :func:`read_state_dict`).
    source : str or Path
        Named at the start of the message.
    """
    for key in sorted(state_dict):
        for pattern, feature in UNSUPPORTED_KEYS:
            if pattern.match(key):
                raise IntVitError(f"{source}: {feature} is not supported (key {key!r})")
    if "head.weight" not in state_dict and "blocks.0.attn.qkv.weight" in state_dict:
        raise IntVitError(f"{source}: no classifier head (head.weight / classifier.weight); intvit runs "
                          "image classifiers")
    if ("head_dist.weight" in state_dict) != ("dist_token" in state_dict):
        raise IntVitError(f"{source}: a distillation head needs a distillation token and vice versa "
                          "(found only one of head_dist.weight and dist_token)")


def _shape(state_dict: dict, key: str, path) -> tuple[int, ...]:
    if key not in state_dict:
        raise IntVitError(f"{path}: missing key {key!r}; not a timm/DeiT/Hugging Face ViT checkpoint")
    return tuple(state_dict[key].shape)


def infer_config(path, config: ViTConfig, state_dict: dict | None = None) -> ViTConfig:
    """``config`` with every field that a checkpoint's shapes and keys fix replaced by the file's.

    Fixed by the tensors: img_size, patch_size, in_chans, num_classes, embed_dim, depth,
    mlp_ratio, class_token, dist_token, qkv_bias, and global_pool 'avg' (timm's ``fc_norm``).
    Nothing fixes num_heads, eps, gelu or the preprocessing: those stay ``config``'s.

    Parameters
    ----------
    path : str or Path
        Checkpoint file (any layout :func:`read_state_dict` accepts); named in messages.
    config : ViTConfig
        Supplies the fields that shapes cannot tell.
    state_dict : dict, optional
        The file's timm-named tensors, when already read.
    """
    if state_dict is None:
        state_dict = read_state_dict(path)
    refuse_unsupported(state_dict, path)
    embed_dim, in_chans, patch_size, patch_w = _shape(state_dict, "patch_embed.proj.weight", path)
    if patch_w != patch_size:
        raise IntVitError(f"{path}: non-square patches ({patch_size}x{patch_w}) are not supported")
    class_token, dist_token = "cls_token" in state_dict, "dist_token" in state_dict
    prefix = int(class_token) + int(dist_token)
    num_tokens = _shape(state_dict, "pos_embed", path)[1]
    grid_size = round(max(num_tokens - prefix, 0) ** 0.5)
    if prefix and round(num_tokens**0.5) ** 2 == num_tokens:
        raise IntVitError(f"{path}: a position embedding without the {prefix} prefix token(s) "
                          "(timm no_embed_class) is not supported")
    if grid_size**2 != num_tokens - prefix or grid_size == 0:
        raise IntVitError(f"{path}: pos_embed has {num_tokens} tokens, not a square grid plus "
                          f"{prefix} prefix token(s); non-square images are not supported")
    depth = len({int(m[1]) for key in state_dict if (m := BLOCK_KEY.match(key))})
    mlp_dim = _shape(state_dict, "blocks.0.mlp.fc1.weight", path)[0]
    global_pool = "avg" if "fc_norm.weight" in state_dict else "token"
    if global_pool == "token" and not class_token:
        raise IntVitError(f"{path}: no class token and no fc_norm: a pooling other than the class token or "
                          "the average (timm global_pool='avg') is not supported")
    return dataclasses.replace(
        config,
        img_size=grid_size * patch_size,
        patch_size=patch_size,
        in_chans=in_chans,
        num_classes=_shape(state_dict, "head.weight", path)[0],
        embed_dim=embed_dim,
        depth=depth,
        mlp_ratio=mlp_dim / embed_dim,
        class_token=class_token,
        dist_token=dist_token,
        global_pool=global_pool,
        qkv_bias="blocks.0.attn.qkv.bias" in state_dict,
        mean=config.mean if len(config.mean) == in_chans else config.mean[:1] * in_chans,
        std=config.std if len(config.std) == in_chans else config.std[:1] * in_chans,
    )


def check_state_dict(state_dict: dict[str, torch.Tensor], config: ViTConfig, source="checkpoint") -> None:
    """Raise IntVitError unless ``state_dict`` has exactly the keys and shapes of ``ViT(config)``.

    Parameters
    ----------
    state_dict : dict
        timm-named tensors.
    config : ViTConfig
        The architecture they must fit.
    source : str or Path
        Named at the start of every message.
    """
    # On the meta device the reference model costs no memory or initialisation time.
    with torch.device("meta"):
        expected = {key: tuple(t.shape) for key, t in ViT(config).state_dict().items()}
    depth = len({int(m[1]) for key in state_dict if (m := BLOCK_KEY.match(key))})
    if depth and depth != config.depth:
        raise IntVitError(f"{source}: checkpoint has {depth} blocks but {config.name} has depth {config.depth}")
    missing = [key for key in expected if key not in state_dict]
    if missing:
        raise IntVitError(
            f"{source}: missing key {missing[0]!r} ({len(missing)} missing in all); "
            f"not a checkpoint of a {config.name} ViT"
        )
    unexpected = sorted(key for key in state_dict if key not in expected)
    if unexpected:
        raise IntVitError(
            f"{source}: unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected in all); "
            "checkpoint is for another architecture"
        )
    classes = state_dict["head.weight"].shape[0]
    if classes != config.num_classes:
        raise IntVitError(
            f"{source}: head.weight has {classes} classes but {config.name} has num_classes {config.num_classes}"
        )
    for key, shape in expected.items():
        found = tuple(state_dict[key].shape)
        if found != shape:
            raise IntVitError(f"{source}: key {key!r} has shape {found}, expected {shape} for {config.name}")


def _build(state_dict: dict[str, torch.Tensor], config: ViTConfig, source) -> ViT:
    check_state_dict(state_dict, config, source)
    model = ViT(config)
    model.load_state_dict({key: t.to(torch.float32) for key, t in state_dict.items()})
    return model.eval()


def load_checkpoint(path, config: ViTConfig) -> ViT:
    """Load a timm, DeiT or Hugging Face ViT checkpoint into ``ViT(config)`` (float32, eval mode).

    Parameters
    ----------
    path : str or Path
        Checkpoint file; the layout is detected from its extension and keys.
    config : ViTConfig
        Architecture the checkpoint must match; :func:`infer_config` derives one from the file.
    """
    return _build(read_state_dict(path), config, Path(path))


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def save_weights(model: ViT, path) -> None:
    """Write ``model`` to a safetensors file plus a JSON sidecar (same stem) with its config.

    Parameters
    ----------
    model : ViT
        Model whose ``config`` and ``state_dict()`` are saved.
    path : str or Path
        Destination ``.safetensors`` file; the parent directory is created if needed.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise IntVitError(f"{path}: weights are saved as .safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {key: t.detach().contiguous().cpu() for key, t in model.state_dict().items()}
    save_file(tensors, path)
    _sidecar(path).write_text(json.dumps(dataclasses.asdict(model.config), indent=2) + "\n")


def read_sidecar(sidecar: Path, base: ViTConfig | None = None) -> ViTConfig:
    """The :class:`ViTConfig` of an intvit JSON sidecar: any subset of its fields, the rest from
    ``base`` (or the dataclass defaults)."""
    try:
        fields = json.loads(sidecar.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise IntVitError(f"{sidecar}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise IntVitError(f"{sidecar}: unreadable ({exc.__class__.__name__})") from None
    if not isinstance(fields, dict):
        raise IntVitError(f"{sidecar}: expected a JSON object of ViTConfig fields")
    known = {field.name for field in dataclasses.fields(ViTConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise IntVitError(f"{sidecar}: unknown config field {unknown[0]!r}")
    for name in TUPLE_FIELDS:
        if name in fields:
            if not isinstance(fields[name], list):
                raise IntVitError(f"{sidecar}: {name} must be a list, not {fields[name]!r}")
            fields[name] = tuple(fields[name])
    try:
        return dataclasses.replace(base, **fields) if base is not None else ViTConfig(**fields)
    except (IntVitError, TypeError) as exc:
        raise IntVitError(f"{sidecar}: {exc}") from None


def load_weights(path) -> ViT:
    """Rebuild a model written by :func:`save_weights` (config from the JSON sidecar)."""
    path = Path(path)
    sidecar = _sidecar(path)
    if not sidecar.is_file():
        raise IntVitError(f"{sidecar}: config sidecar missing for {path.name}")
    return _build(read_state_dict(path), read_sidecar(sidecar), path)


def load_embedded() -> ViT:
    """The trained MNIST ViT shipped in ``quant/weights/`` (see examples/train_mnist.py)."""
    return load_weights(EMBEDDED_WEIGHTS)
