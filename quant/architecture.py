"""Which model a checkpoint holds and how its inputs were prepared, with where each field came from.

:func:`load_model_spec` turns what a user brings into a float :class:`~quant.model.ViT`:

* a Hugging Face ``save_pretrained`` folder (``config.json`` + ``model.safetensors`` or
  ``pytorch_model.bin``, and ``preprocessor_config.json``), or a weights file with those files
  beside it;
* a timm folder written by ``timm.models.save_for_hf`` (``config.json`` with ``architecture``,
  ``model_args`` and ``pretrained_cfg``);
* a bare timm/DeiT state dict (``.pth``/``.pt``/``.bin``/``.safetensors``);
* intvit's own ``.safetensors`` with its ``.json`` sidecar of :class:`ViTConfig` fields.

Fields are resolved in this order: the tensor shapes (:func:`quant.checkpoint.infer_config`),
the checkpoint's config files, explicit overrides (command-line options), a preset named with
``--model``, then documented library defaults. A preset that disagrees with the checkpoint on
any field it determines is an error naming the field; an override that contradicts the tensor
shapes is one too. The head count, which no shape fixes, comes from a config file, ``--heads`` or
a preset; without any of them the load fails rather than guess.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path

from intvit.quant.config import IMAGENET_MEAN, IMAGENET_STD, PRESETS, ViTConfig, get_config
from intvit.quant.errors import IntVitError

__all__ = ["ModelSpec", "load_model_spec", "FIELD_OPTIONS", "HF_EPS", "TIMM_EPS"]

# Defaults of the libraries when a checkpoint does not say (transformers ViTConfig, timm VisionTransformer).
HF_EPS = 1e-12
TIMM_EPS = 1e-6
HF_GELU = {"gelu": "exact", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh"}
# Pillow resampling codes as transformers writes them in preprocessor_config.json.
PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
EIGHT_BIT_RESCALE = 1 / 255
# timm ViT/DeiT architecture names give the head count through their size word.
TIMM_SIZE_HEADS = {"tiny": 3, "small": 6, "medium": 8, "base": 12, "large": 16, "huge": 16}
TIMM_ARCH = re.compile(r"^(?:vit|deit|deit3)_(tiny|small|medium|base|large|huge)_")
WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin", "model.pth", "model.pt")
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
# ViTConfig fields a checkpoint can determine, compared against a preset.
COMPARED = ("img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth", "num_heads", "mlp_ratio",
            "eps", "class_token", "dist_token", "global_pool", "qkv_bias", "gelu", "mean", "std")
SHAPE_FIELDS = ("img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth", "mlp_ratio",
                "class_token", "dist_token", "global_pool", "qkv_bias")
# Command-line spelling of each field that an option can set.
FIELD_OPTIONS = {
    "img_size": "--img-size", "patch_size": "--patch-size", "embed_dim": "--embed-dim", "depth": "--depth",
    "num_heads": "--heads", "eps": "--eps", "gelu": "--gelu", "mean": "--mean", "std": "--std",
    "resize": "--resize", "crop_pct": "--crop", "interpolation": "--interpolation",
}


@dataclass(frozen=True)
class ModelSpec:
    """A resolved model: its config and where the weights and normalisation came from.

    Attributes
    ----------
    config : ViTConfig
    weights : Path or None
        The weights file; None for seeded random weights.
    source : str
        One line naming the checkpoint and its layout (report header).
    normalization : str
        Where mean/std came from, or that they are unknown and which were used.
    notes : tuple of str
        Other fields taken from library defaults rather than the checkpoint.
    """

    config: ViTConfig
    weights: Path | None
    source: str
    normalization: str
    notes: tuple[str, ...] = ()

    def build(self, seed: int = 0):
        """The float model in eval mode: the checkpoint's weights, or seeded random ones."""
        import torch

        from intvit.quant.checkpoint import _build, read_state_dict
        from intvit.quant.model import ViT

        if self.weights is None:
            torch.manual_seed(seed)
            return ViT(self.config).eval()
        return _build(read_state_dict(self.weights), self.config, self.weights)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise IntVitError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise IntVitError(f"{path}: unreadable ({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise IntVitError(f"{path}: expected a JSON object")
    return data


def _locate(path: Path) -> tuple[Path, Path | None, Path | None]:
    """(weights file, config.json or None, preprocessor_config.json or None)."""
    if path.is_dir():
        if (path / "model.safetensors.index.json").is_file() or (path / "pytorch_model.bin.index.json").is_file():
            raise IntVitError(f"{path}: sharded checkpoints (*.index.json) are not supported; save one file")
        found = [path / name for name in WEIGHT_NAMES if (path / name).is_file()]
        if not found:
            found = sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
            if len(found) != 1:
                raise IntVitError(f"{path}: no weights file (model.safetensors or pytorch_model.bin) in the folder"
                                  if not found else f"{path}: several weights files; name one of them")
        weights, folder = found[0], path
    elif path.is_file():
        weights, folder = path, path.parent
    else:
        raise IntVitError(f"{path}: no such checkpoint file or folder")
    config = folder / "config.json"
    processor = folder / "preprocessor_config.json"
    return weights, config if config.is_file() else None, processor if processor.is_file() else None


def _need_int(data: dict, key: str, where: Path) -> int:
    value = data[key]
    if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:
        value = value[0]
    if not isinstance(value, int) or isinstance(value, bool):
        raise IntVitError(f"{where}: {key} {value!r} is not supported (intvit needs one integer; "
                          "non-square images are not supported)")
    return value


def _hf_fields(data: dict, where: Path) -> tuple[dict, list[str]]:
    """ViTConfig fields of a transformers ViTConfig ``config.json``."""
    if data.get("model_type") != "vit":
        raise IntVitError(f"{where}: model_type {data.get('model_type')!r} is not supported; intvit reads "
                          "Hugging Face ViT ('vit') and timm ViT checkpoints")
    fields, notes = {}, []
    names = {"image_size": "img_size", "patch_size": "patch_size", "num_channels": "in_chans",
             "hidden_size": "embed_dim", "num_hidden_layers": "depth", "num_attention_heads": "num_heads"}
    for key, field in names.items():
        if key in data:
            fields[field] = _need_int(data, key, where)
    if "intermediate_size" in data and "embed_dim" in fields:
        fields["mlp_ratio"] = _need_int(data, "intermediate_size", where) / fields["embed_dim"]
    fields["eps"] = float(data.get("layer_norm_eps", HF_EPS))
    act = data.get("hidden_act", "gelu")
    if act not in HF_GELU:
        raise IntVitError(f"{where}: hidden_act {act!r} is not supported (intvit runs {', '.join(HF_GELU)})")
    fields["gelu"] = HF_GELU[act]
    if "qkv_bias" in data:
        fields["qkv_bias"] = bool(data["qkv_bias"])
    labels = data.get("id2label")
    if isinstance(labels, dict) and labels:
        try:
            ordered = [labels[str(i)] for i in range(len(labels))]
        except KeyError:
            raise IntVitError(f"{where}: id2label must number the classes 0..{len(labels) - 1}") from None
        if ordered != [f"LABEL_{i}" for i in range(len(ordered))]:
            fields["labels"] = tuple(str(name) for name in ordered)
    return fields, notes


def _timm_fields(data: dict, where: Path) -> tuple[dict, dict, str | None]:
    """(architecture fields, preprocessing fields, normalisation source) of a timm ``config.json``."""
    args = data.get("model_args") or {}
    if not isinstance(args, dict):
        raise IntVitError(f"{where}: model_args must be an object")
    fields = {}
    for key, field in (("embed_dim", "embed_dim"), ("depth", "depth"), ("num_heads", "num_heads"),
                       ("patch_size", "patch_size"), ("in_chans", "in_chans"), ("img_size", "img_size")):
        if key in args:
            fields[field] = _need_int(args, key, where)
    for key in ("class_token", "qkv_bias"):
        if key in args:
            fields[key] = bool(args[key])
    pool = args.get("global_pool", data.get("global_pool", "token"))
    if pool not in ("token", "avg"):
        raise IntVitError(f"{where}: global_pool {pool!r} is not supported (intvit runs 'token' and 'avg')")
    fields["global_pool"] = pool
    for key, feature in (("no_embed_class", "no_embed_class"), ("reg_tokens", "register tokens"),
                         ("init_values", "LayerScale (init_values)"), ("pre_norm", "pre_norm"),
                         ("qk_norm", "qk_norm"), ("fc_norm", "fc_norm")):
        value = args.get(key)
        if value and not (key == "fc_norm" and pool == "avg"):
            raise IntVitError(f"{where}: {feature} is not supported (model_args.{key} = {value!r})")
    if pool == "avg" and args.get("fc_norm") is False:
        raise IntVitError(f"{where}: global average pooling after the final norm (fc_norm false) is not supported")
    if args.get("act_layer") not in (None, "gelu"):
        raise IntVitError(f"{where}: act_layer {args['act_layer']!r} is not supported (intvit runs 'gelu')")
    if "num_heads" not in fields and (match := TIMM_ARCH.match(str(data.get("architecture", "")))):
        fields["num_heads"] = TIMM_SIZE_HEADS[match[1]]
    cfg = data.get("pretrained_cfg") or {}
    prep = {}
    if "mean" in cfg and "std" in cfg:
        prep["mean"], prep["std"] = tuple(cfg["mean"]), tuple(cfg["std"])
    if "crop_pct" in cfg:
        prep["crop_pct"] = float(cfg["crop_pct"])
    if cfg.get("interpolation"):
        prep["interpolation"] = cfg["interpolation"]
    if cfg.get("crop_mode", "center") != "center":
        raise IntVitError(f"{where}: crop_mode {cfg['crop_mode']!r} is not supported (intvit crops the centre)")
    return fields, prep, f"{where} pretrained_cfg" if "mean" in prep else None


def _hf_preprocessing(path: Path, img_size: int) -> dict:
    """ViTConfig preprocessing fields of a transformers ``preprocessor_config.json``."""
    data = _read_json(path)
    prep = {}
    if data.get("do_rescale", True):
        factor = data.get("rescale_factor", EIGHT_BIT_RESCALE)
        if abs(factor - EIGHT_BIT_RESCALE) > 1e-12:
            raise IntVitError(f"{path}: rescale_factor {factor} is not supported (intvit reads pixels as value/255)")
    else:
        raise IntVitError(f"{path}: do_rescale false is not supported (intvit reads pixels as value/255)")
    if data.get("do_normalize", True):
        mean, std = data.get("image_mean"), data.get("image_std")
        if not (isinstance(mean, list) and isinstance(std, list)):
            raise IntVitError(f"{path}: image_mean and image_std must be lists")
        prep["mean"], prep["std"] = tuple(mean), tuple(std)
    else:
        prep["mean"], prep["std"] = None, None          # filled with zeros/ones per channel
    size = data.get("size") or {}
    crop = data.get("crop_size") if data.get("do_center_crop") else None
    if crop is not None and (crop.get("height") != img_size or crop.get("width") != img_size):
        raise IntVitError(f"{path}: crop_size {crop} does not give the model's {img_size}x{img_size} input")
    if not data.get("do_resize", True):
        prep["resize"] = (img_size, img_size)
    elif "shortest_edge" in size:
        if crop is None and size["shortest_edge"] != img_size:
            raise IntVitError(f"{path}: resizing the shortest edge to {size['shortest_edge']} without a centre crop "
                              f"does not give the model's square {img_size}x{img_size} input")
        prep["resize"] = (int(size["shortest_edge"]),)
    elif "height" in size and "width" in size:
        prep["resize"] = (int(size["height"]), int(size["width"]))
        if crop is None and prep["resize"] != (img_size, img_size):
            raise IntVitError(f"{path}: size {size} does not give the model's {img_size}x{img_size} input")
    else:
        raise IntVitError(f"{path}: size {size!r} is not supported (use height/width or shortest_edge)")
    resample = data.get("resample", 2)
    if resample not in PIL_RESAMPLE:
        raise IntVitError(f"{path}: resample {resample!r} is not a Pillow filter code")
    prep["interpolation"] = PIL_RESAMPLE[resample]
    return prep


def _conflict(source: str, preset: str, field: str, preset_value, found_value, origin: str) -> IntVitError:
    how = "run it without --model (the architecture and preprocessing come from the checkpoint)"
    if field in FIELD_OPTIONS and field not in SHAPE_FIELDS:
        how += f", or give {FIELD_OPTIONS[field]} to choose"
    return IntVitError(f"{source}: --model {preset} has {field} {preset_value!r} but the checkpoint has "
                       f"{found_value!r} ({origin}); {how}")


def _matching_presets(config: ViTConfig) -> list[str]:
    return [name for name, preset in PRESETS.items()
            if all(getattr(preset, f) == getattr(config, f) for f in SHAPE_FIELDS)]


def load_model_spec(weights=None, preset: str | None = None, overrides: dict | None = None) -> ModelSpec:
    """Resolve the architecture and preprocessing of a checkpoint (or of a preset without one).

    Parameters
    ----------
    weights : str or Path, optional
        Checkpoint file or folder; None for a preset with seeded random weights.
    preset : str, optional
        A :data:`~quant.config.PRESETS` name; with ``weights`` it must agree with the checkpoint.
    overrides : dict, optional
        ViTConfig fields given explicitly (command-line options); an override may not contradict
        the tensor shapes.

    Returns
    -------
    ModelSpec
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if weights is None:
        return _preset_spec(preset or "mnist", overrides)
    r = _Resolution(Path(weights))
    if preset is not None:
        r.apply_preset(preset, overrides)
    r.apply_overrides(overrides)
    return r.finish()


def _preset_spec(preset: str, overrides: dict) -> ModelSpec:
    config = get_config(preset)
    norm = f"preset {preset}"
    if overrides:
        config = dataclasses.replace(config, name=f"{preset}-custom", **overrides)
        if "mean" in overrides or "std" in overrides:
            norm = "options " + " and ".join(FIELD_OPTIONS[f] for f in ("mean", "std") if f in overrides)
    # The mnist preset alone is the embedded trained model (intvit.quant.checkpoint.load_embedded).
    source = config.name if config == get_config("mnist") else f"{config.name} (seeded random weights)"
    return ModelSpec(config, None, source, f"mean {_fmt(config.mean)} std {_fmt(config.std)} from {norm}")


class _Resolution:
    """Fields of one checkpoint with their origins, filled source by source (see the module docstring)."""

    def __init__(self, path: Path):
        from intvit.quant.checkpoint import hf_to_timm, infer_config, is_hugging_face, read_raw_state_dict, read_sidecar

        self.weights, config_json, processor_json = _locate(path)
        sidecar = self.weights.with_suffix(".json")
        own = sidecar.is_file() and sidecar != config_json
        state_dict = read_raw_state_dict(self.weights)
        self.hf = is_hugging_face(state_dict)
        if self.hf:
            state_dict = hf_to_timm(state_dict)
        self.found: dict = {}                 # architecture field -> (value, origin)
        self.norm: tuple | None = None        # (mean, std, origin)
        self.prep: dict = {}                  # resize, crop_pct, interpolation
        self.labels: tuple = ()
        self.notes: list[str] = []
        self.name = self.weights.parent.name if self.weights.name in WEIGHT_NAMES else self.weights.stem
        layout = "Hugging Face ViTForImageClassification" if self.hf else "timm/DeiT state dict"
        if own:
            layout = f"intvit weights + {sidecar.name}"
            given = _read_json(sidecar)
            self.shaped = infer_config(self.weights, ViTConfig(num_heads=1), state_dict)
            # Each field the sidecar names must match the tensors; the rest come from them.
            shaped_heads = dataclasses.replace(self.shaped, num_heads=given.get("num_heads", 1))
            declared = read_sidecar(sidecar, shaped_heads if isinstance(given.get("num_heads", 1), int) else None)
            self.name = declared.name if "name" in given else self.name
            for field in SHAPE_FIELDS:
                if field in given and getattr(self.shaped, field) != getattr(declared, field):
                    raise IntVitError(f"{sidecar}: {field} is {getattr(declared, field)!r} but the weights have "
                                      f"{getattr(self.shaped, field)!r}")
            self.found = {f: (getattr(self.shaped, f), "tensor shapes") for f in SHAPE_FIELDS}
            self.found.update({f: (getattr(declared, f), sidecar.name) for f in COMPARED
                               if f not in ("mean", "std") and f in given})
            if "mean" in given and "std" in given:
                self.norm = (declared.mean, declared.std, str(sidecar))
            self.prep = {f: getattr(declared, f) for f in ("resize", "crop_pct", "interpolation") if f in given}
            self.labels = declared.labels
        else:
            self.shaped = infer_config(self.weights, ViTConfig(num_heads=1), state_dict)
            self.found = {f: (getattr(self.shaped, f), "tensor shapes") for f in SHAPE_FIELDS}
            if config_json is not None:
                layout = self._config_json(config_json) or layout
            if self.hf and processor_json is not None:
                prep = _hf_preprocessing(processor_json, self.shaped.img_size)
                mean, std = prep.pop("mean"), prep.pop("std")
                if mean is None:                                    # do_normalize false
                    mean, std = (0.0,) * self.shaped.in_chans, (1.0,) * self.shaped.in_chans
                self.norm = (mean, std, str(processor_json))
                self.prep.update(prep)
        self.source = f"{path} ({layout})"
        if "eps" not in self.found:
            default = HF_EPS if self.hf else TIMM_EPS
            self.found["eps"] = (default, f"the {'transformers' if self.hf else 'timm'} default")
            self.notes.append(f"LayerNorm eps {default:g} is the {'transformers' if self.hf else 'timm'} "
                              "default (nothing in the checkpoint says)")

    def _config_json(self, path: Path) -> str | None:
        data = _read_json(path)
        if "architecture" in data or "pretrained_cfg" in data:
            if self.hf:
                raise IntVitError(f"{path}: a timm config beside Hugging Face weights")
            fields, prep, norm_origin = _timm_fields(data, path)
            if norm_origin:
                self.norm = (prep.pop("mean"), prep.pop("std"), norm_origin)
            self.prep.update(prep)
            layout = f"timm {data.get('architecture', 'VisionTransformer')} + config.json"
        else:
            if not self.hf:
                raise IntVitError(f"{path}: a Hugging Face config beside timm-layout weights")
            fields, _ = _hf_fields(data, path)
            layout = "Hugging Face ViTForImageClassification + config.json"
        self.labels = fields.pop("labels", ())
        for field, value in fields.items():
            if field in SHAPE_FIELDS and value != self.found[field][0]:
                raise IntVitError(f"{path}: {field} is {value!r} but the weights have {self.found[field][0]!r}")
            self.found.setdefault(field, (value, path.name))
        return layout

    def apply_preset(self, preset: str, overrides: dict) -> None:
        base = get_config(preset)
        known = dict(self.found)
        if self.norm is not None:
            known.update(mean=(self.norm[0], self.norm[2]), std=(self.norm[1], self.norm[2]))
        for field in COMPARED:
            if field in known and field not in overrides and _differs(getattr(base, field), known[field][0]):
                raise _conflict(self.source, preset, field, getattr(base, field), known[field][0], known[field][1])
        for field in COMPARED:
            if field not in ("mean", "std"):
                self.found.setdefault(field, (getattr(base, field), f"preset {preset}"))
        if self.norm is None:
            self.norm = (base.mean, base.std, f"preset {preset}")

    def apply_overrides(self, overrides: dict) -> None:
        for field, value in overrides.items():
            if field in SHAPE_FIELDS and field in self.found and value != self.found[field][0]:
                raise IntVitError(f"{self.source}: {FIELD_OPTIONS.get(field, field)} {value!r} contradicts the "
                                  f"checkpoint's {field} {self.found[field][0]!r} ({self.found[field][1]})")
            if field in ("resize", "crop_pct", "interpolation"):
                self.prep[field] = value
            elif field not in ("mean", "std"):
                self.found[field] = (value, FIELD_OPTIONS.get(field, field))
        if "mean" in overrides or "std" in overrides:
            if self.norm is None and not ("mean" in overrides and "std" in overrides):
                raise IntVitError(f"{self.source}: the checkpoint gives no normalisation; give both --mean and --std")
            mean = overrides.get("mean", self.norm[0] if self.norm else None)
            std = overrides.get("std", self.norm[1] if self.norm else None)
            self.norm = (mean, std, "options " + " and ".join(FIELD_OPTIONS[f] for f in ("mean", "std")
                                                              if f in overrides))
        if "resize" in overrides and "crop_pct" in overrides:
            raise IntVitError("give --resize or --crop, not both")
        if "resize" in overrides:
            self.prep.pop("crop_pct", None)
        if "crop_pct" in overrides:
            self.prep["resize"] = ()

    def finish(self) -> ModelSpec:
        if "num_heads" not in self.found:
            matches = _matching_presets(self.shaped)
            hint = f" or --model {matches[0]} (its shapes match)" if matches else ""
            raise IntVitError(f"{self.source}: the head count is not fixed by the tensor shapes; "
                              f"give --heads N{hint}")
        in_chans = self.found["in_chans"][0]
        if self.norm is None:
            if self.hf:
                origin = ("unknown: no preprocessor_config.json beside the weights, so ImageNet's; "
                          "give --mean/--std if the model was trained otherwise")
            else:
                origin = ("timm's default for a VisionTransformer without a saved pretrained_cfg "
                          "(resolve_data_config: ImageNet mean/std, bicubic, crop_pct 0.875)")
            mean, std = IMAGENET_MEAN, IMAGENET_STD
            if in_chans != 3:
                mean, std = mean[:1] * in_chans, std[:1] * in_chans
                origin = (f"unknown for {in_chans} channel(s): no normalisation in the checkpoint, so ImageNet's "
                          "first channel; give --mean/--std")
            self.norm = (mean, std, origin)
        mean, std, origin = self.norm
        if len(mean) != in_chans or len(std) != in_chans:
            raise IntVitError(f"{self.source}: mean/std from {origin} have {len(mean)}/{len(std)} values but the "
                              f"model has {in_chans} input channel(s)")
        fields = {field: value for field, (value, _) in self.found.items()}
        labels = self.labels if len(self.labels) == fields["num_classes"] else ()
        try:
            config = ViTConfig(name=self.name, mean=tuple(map(float, mean)), std=tuple(map(float, std)),
                               labels=labels, **fields, **self.prep)
        except IntVitError as exc:
            raise IntVitError(f"{self.source}: {exc}") from None
        return ModelSpec(config, self.weights, self.source,
                         f"mean {_fmt(config.mean)} std {_fmt(config.std)} from {origin}", tuple(self.notes))


def _differs(a, b) -> bool:
    if isinstance(a, tuple) or isinstance(b, tuple):
        return len(a) != len(b) or any(abs(x - y) > 1e-9 for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return abs(a - b) > 1e-9 * max(abs(a), abs(b))
    return a != b


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"
