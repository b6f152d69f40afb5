"""Import real ViT checkpoints from local files, and save/load our own weights.

Accepted layouts, detected from the keys:

* timm ``VisionTransformer`` / DeiT state dicts, from ``.pth``/``.pt``/``.bin`` (read with
  ``torch.load(weights_only=True)``; a dict holding the weights under ``model`` or
  ``state_dict``, as DeiT's releases do, is unwrapped) or ``.safetensors``.
* Hugging Face ``ViTForImageClassification`` safetensors/``.bin`` (``vit.embeddings...``,
  ``vit.encoder.layer.N...``, ``classifier``), mapped onto timm names with q, k and v
  concatenated into ``qkv``.

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
HF_LAYER = re.compile(r"vit\.encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")
HF_QKV = ("attention.attention.query", "attention.attention.key", "attention.attention.value")
BLOCK_KEY = re.compile(r"blocks\.(\d+)\.")
# Keys that exist in the sidecar JSON but are tuples in ViTConfig.
TUPLE_FIELDS = ("mean", "std")
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
    out, qkv_parts = {}, {}
    for key, tensor in state_dict.items():
        match = HF_LAYER.match(key)
        if key in HF_TOP_NAMES:
            out[HF_TOP_NAMES[key]] = tensor
        elif match and match[2] in HF_BLOCK_NAMES:
            out[f"blocks.{match[1]}.{HF_BLOCK_NAMES[match[2]]}.{match[3]}"] = tensor
        elif match and match[2] in HF_QKV:
            qkv_parts[(match[1], match[3], match[2])] = tensor
        else:
            out[key] = tensor
    for layer, kind in sorted({(layer, kind) for layer, kind, _ in qkv_parts}):
        parts = [qkv_parts.get((layer, kind, name)) for name in HF_QKV]
        missing = [name for name, part in zip(HF_QKV, parts) if part is None]
        if missing:
            raise IntVitError(f"missing key 'vit.encoder.layer.{layer}.{missing[0]}.{kind}'")
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
    path = Path(path)
    raw = _load_raw(path)
    for wrapper in WRAPPER_KEYS:
        if isinstance(raw, dict) and isinstance(raw.get(wrapper), dict):
            raw = raw[wrapper]
            break
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise IntVitError(f"{path}: not a state dict (expected a mapping of names to tensors)")
    return hf_to_timm(raw) if HF_MARKER in raw else dict(raw)


def _shape(state_dict: dict, key: str, path) -> tuple[int, ...]:
    if key not in state_dict:
        raise IntVitError(f"{path}: missing key {key!r}; not a timm/DeiT/Hugging Face ViT checkpoint")
    return tuple(state_dict[key].shape)


def infer_config(path, config: ViTConfig) -> ViTConfig:
    """The config a checkpoint's shapes imply, with heads, eps, mean, std and name from ``config``.

    Parameters
    ----------
    path : str or Path
        Checkpoint file (any layout :func:`read_state_dict` accepts).
    config : ViTConfig
        Supplies what shapes cannot tell: ``num_heads``, ``eps``, normalisation, ``name``.
    """
    state_dict = read_state_dict(path)
    embed_dim, in_chans, patch_size, _ = _shape(state_dict, "patch_embed.proj.weight", path)
    num_tokens = _shape(state_dict, "pos_embed", path)[1]
    grid_size = round((num_tokens - 1) ** 0.5)
    if grid_size**2 != num_tokens - 1:
        raise IntVitError(f"{path}: pos_embed has {num_tokens} tokens, not a square grid plus a class token")
    depth = len({int(m[1]) for key in state_dict if (m := BLOCK_KEY.match(key))})
    mlp_dim = _shape(state_dict, "blocks.0.mlp.fc1.weight", path)[0]
    return dataclasses.replace(
        config,
        img_size=grid_size * patch_size,
        patch_size=patch_size,
        in_chans=in_chans,
        num_classes=_shape(state_dict, "head.weight", path)[0],
        embed_dim=embed_dim,
        depth=depth,
        mlp_ratio=mlp_dim / embed_dim,
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


def load_weights(path) -> ViT:
    """Rebuild a model written by :func:`save_weights` (config from the JSON sidecar)."""
    path = Path(path)
    sidecar = _sidecar(path)
    if not sidecar.is_file():
        raise IntVitError(f"{sidecar}: config sidecar missing for {path.name}")
    try:
        fields = json.loads(sidecar.read_text())
    except json.JSONDecodeError as exc:
        raise IntVitError(f"{sidecar}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    known = {field.name for field in dataclasses.fields(ViTConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise IntVitError(f"{sidecar}: unknown config field {unknown[0]!r}")
    for name in TUPLE_FIELDS:
        if name in fields:
            fields[name] = tuple(fields[name])
    return _build(read_state_dict(path), ViTConfig(**fields), path)


def load_embedded() -> ViT:
    """The trained MNIST ViT shipped in ``quant/weights/`` (see examples/train_mnist.py)."""
    return load_weights(EMBEDDED_WEIGHTS)
