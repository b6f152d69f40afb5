"""Post-training quantisation: a float ViT plus calibration images -> an ``IntProgram``.

SwiftTron-style scheme:

* linear work (patch embedding, QKV, Q.K^T, attention.V, projections, MLP, head) in
  INT8 x INT8 -> INT32 with INT32 bias; weights symmetric per output channel (the head
  per tensor, so INT32 logits compare directly);
* activations symmetric INT8 on scales calibrated from the calibration set;
* softmax, GELU and LayerNorm in integer arithmetic on fixed-point formats (Q.12 scores,
  Q.10 GELU input, Q.7 probabilities); the requantiser brings accumulators into them;
* dyadic requantisation between ops and residual additions on aligned scales.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from intvit.quant.calibrate import UNSCALED_ACTIVATIONS, calibrate
from intvit.quant.config import ViTConfig
from intvit.quant.errors import IntVitError
from intvit.quant.gelu import GELU_INPUT_BITS, GELU_INPUT_FRAC_BITS, GELU_OUTPUT_FRAC_BITS
from intvit.quant.layernorm import LN_NORM_FRAC_BITS, layernorm_divisors
from intvit.quant.matmul import check_accumulator
from intvit.quant.program import IntProgram, Op, TensorInfo
from intvit.quant.requant import INT32_MAX, add_multipliers, dyadic
from intvit.quant.softmax import SOFTMAX_INPUT_FRAC_BITS, SOFTMAX_OUTPUT_FRAC_BITS

if TYPE_CHECKING:       # torch loads only when a float model is calibrated: the shape program needs none
    from intvit.quant.model import ViT

__all__ = ["quantize_model", "quantize_weight", "assemble_program", "shape_program"]

INT8_LEVELS = 127


def quantize_weight(weight: np.ndarray, per_channel: bool = True,
                    bound: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric INT8 of a (out, in) weight; returns (int8 weight, scale per output channel).

    ``bound`` fixes the per-tensor range (so that two heads share one scale).
    """
    if bound is None:
        bound = np.abs(weight).max(axis=1) if per_channel else np.abs(weight).max()
    bound = np.broadcast_to(bound, (len(weight),))
    scale = np.where(bound > 0, bound, 1.0) / INT8_LEVELS
    return np.clip(np.rint(weight / scale[:, None]), -INT8_LEVELS, INT8_LEVELS).astype(np.int8), scale


class _Builder:
    """Accumulates ops, constants and tensor scales in program order."""

    def __init__(self):
        self.ops: list[Op] = []
        self.constants: dict[str, np.ndarray] = {}
        self.tensors: dict[str, TensorInfo] = {}

    def const(self, name: str, value: np.ndarray, dtype) -> str:
        self.constants[name] = np.ascontiguousarray(value, dtype=dtype)
        return name

    def op(self, kind, name, inputs, outputs, infos, **attrs) -> str:
        self.ops.append(Op(kind, name, tuple(inputs), tuple(outputs), attrs))
        for output, info in zip(outputs, infos):
            self.tensors[output] = info
        return outputs[0]

    def requant(self, name: str, x: str, scale, out: str, info: TensorInfo) -> str:
        m, s = dyadic(scale)
        return self.op("requant", f"{name}.requant", [x, self.const(f"{name}.multiplier", m, np.int32),
                                                      self.const(f"{name}.shift", s, np.int8)],
                       [out], [info], bits=info.bits)

    def linear(self, name: str, x: str, s_x: float, weight: np.ndarray, bias: np.ndarray,
               out: str, s_out, per_channel: bool = True, bits: int = 8, bound: float | None = None) -> str:
        """INT8 linear layer; requantised to ``s_out`` (scalar or per channel) unless ``s_out`` is None."""
        wq, s_w = quantize_weight(weight, per_channel, bound)
        acc_scale = s_x * s_w
        bias_q = np.rint(bias / acc_scale)
        if np.abs(bias_q).max(initial=0) > INT32_MAX:
            raise IntVitError(f"{name}: bias does not fit INT32 at scale {acc_scale.min():.3g}")
        bias_name = self.const(f"{name}.bias", bias_q, np.int32)
        check_accumulator(wq.shape[1], self.constants[bias_name], name)
        acc = out if s_out is None else f"{name}.acc"
        acc_info = TensorInfo(float(acc_scale[0]) if not per_channel else None, 32,
                              out if s_out is None else None)
        self.op("matmul", name, [x, self.const(f"{name}.weight", wq.T, np.int8), bias_name], [acc], [acc_info])
        if s_out is None:
            return acc
        return self.requant(name, acc, acc_scale / s_out, out, TensorInfo(_scalar(s_out), bits, out))

    def layernorm(self, name: str, x: str, norm: tuple[np.ndarray, np.ndarray], s_out: float, out: str) -> str:
        gamma, beta = norm
        # Per-channel gamma scale, floored so that beta still fits the INT32 affine sum.
        s_g = np.maximum(np.abs(gamma) / INT8_LEVELS, np.abs(beta) * 2.0**LN_NORM_FRAC_BITS / 2.0**30)
        s_g = np.where(s_g > 0, s_g, 1.0)
        norm_scale = s_g * 2.0**-LN_NORM_FRAC_BITS
        m, s = dyadic(norm_scale / s_out)
        mean_m, mean_s, var_m, var_s = layernorm_divisors(len(gamma))
        inputs = [x,
                  self.const(f"{name}.gamma", np.rint(gamma / s_g), np.int8),
                  self.const(f"{name}.beta", np.rint(beta / norm_scale), np.int32),
                  self.const(f"{name}.multiplier", m, np.int32),
                  self.const(f"{name}.shift", s, np.int8)]
        return self.op("layernorm", name, inputs, [out], [TensorInfo(s_out, 8, out)],
                       mean_multiplier=mean_m, mean_shift=mean_s, var_multiplier=var_m, var_shift=var_s)

    def add(self, name: str, a: str, s_a: float, b: str, s_b: float, s_out: float, out: str) -> str:
        m_a, m_b, shift = add_multipliers(s_a, s_b, s_out)
        return self.op("add", name, [a, b], [out], [TensorInfo(s_out, 8, out)], m_a=m_a, m_b=m_b, shift=shift)


def _scalar(scale) -> float | None:
    scale = np.asarray(scale)
    return float(scale) if scale.ndim == 0 else None


def _params(parameters: dict[str, np.ndarray], module: str) -> tuple[np.ndarray, np.ndarray]:
    """Weight (out, in) and bias of a linear or conv layer, or gamma and beta of a LayerNorm, in float64."""
    weight = np.asarray(parameters[f"{module}.weight"], dtype=np.float64)
    # A layer without bias (qkv_bias=False) is a matmul whose INT32 accumulators start at zero.
    bias = parameters.get(f"{module}.bias")
    bias = np.zeros(len(weight)) if bias is None else np.asarray(bias, dtype=np.float64)
    return weight.reshape(weight.shape[0], -1) if weight.ndim > 1 else weight, bias


def _head(b: _Builder, cfg: ViTConfig, parameters: dict, x: str, s_x: float, scale) -> None:
    """Pooling, final norm and classifier(s): INT32 logits on one per-tensor scale."""
    if cfg.global_pool == "avg":
        b.op("token_mean", "pool", [x], ["pool"], [TensorInfo(s_x, 8)], start=cfg.num_prefix_tokens)
        s_norm = scale("fc_norm")
        b.layernorm("fc_norm", "pool", _params(parameters, "fc_norm"), s_norm, "fc_norm")
        w, bias = _params(parameters, "head")
        b.linear("head", "fc_norm", s_norm, w, bias, "logits", None, per_channel=False)
        return
    if not cfg.dist_token:
        b.op("select_token", "cls", [x], ["cls"], [TensorInfo(s_x, 8)], index=0)
        s_norm = scale("norm")
        b.layernorm("norm", "cls", _params(parameters, "norm"), s_norm, "norm")
        w, bias = _params(parameters, "head")
        b.linear("head", "norm", s_norm, w, bias, "logits", None, per_channel=False)
        return
    # DeiT distilled: both tokens on one norm scale and both heads on one weight scale, so the
    # two INT32 logits share a scale and average exactly as the float heads do.
    s_norm = max(scale("norm"), scale("norm_dist"))
    heads = [("head", "cls", "norm", "head"), ("head_dist", "dist", "norm_dist", "head_dist")]
    bound = max(float(np.abs(_params(parameters, head)[0]).max()) for head, *_ in heads)
    for index, (head, token, norm, name) in enumerate(heads):
        b.op("select_token", token, [x], [token], [TensorInfo(s_x, 8)], index=index)
        b.layernorm(norm, token, _params(parameters, "norm"), s_norm, norm)
        w, bias = _params(parameters, head)
        b.linear(name, norm, s_norm, w, bias, f"{name}.logits", None, per_channel=False, bound=bound)
        b.tensors[f"{name}.logits"] = TensorInfo(b.tensors[f"{name}.logits"].scale, 32)
    b.op("average", "logits", ["head.logits", "head_dist.logits"], ["logits"],
         [TensorInfo(b.tensors["head.logits"].scale, 32, "logits")])


def quantize_model(model: ViT, calibration_images: np.ndarray, *, method: str = "minmax",
                   percentile: float = 99.99, batch_size: int = 32, progress=None,
                   workers: int | None = None) -> IntProgram:
    """Calibrate ``model`` on normalised images and build its integer program.

    Parameters
    ----------
    model : ViT
    calibration_images : float array (N, C, H, W), normalised with ``quant.data.normalize``
    method : "minmax" or "percentile"
        Activation range: max |x| over the set, or the given percentile of |x|.
    batch_size : int
        Images per batch: percentile calibration samples each batch's activations; minmax ranges
        do not depend on it.
    progress : optional callable wrapping the batch iterator (e.g. tqdm)
    workers : int, optional
        Threads running minmax calibration (default: torch's thread count); the program does not
        depend on it (``quant.calibrate.calibration_ranges``).
    """
    result = calibrate(model, calibration_images, method=method, percentile=percentile, batch_size=batch_size,
                       progress=progress, workers=workers, skip=UNSCALED_ACTIVATIONS)
    return assemble_program(model.config, result.parameters, result.ranges.range, result.settings)


def shape_program(config: ViTConfig) -> IntProgram:
    """The program of ``config`` with nothing calibrated: its ops, constant shapes and bit widths.

    Built by ``assemble_program`` from zero weights and unit activation ranges, without torch,
    a float model or data. Every cycle and byte count of the simulators depends on these alone,
    so they equal those of any calibrated program of the same architecture (tested); the
    constants' values and the scales mean nothing. ``calibration`` is ``{"method": "none", "images": 0}``.
    """
    parameters = {name: np.zeros(shape, np.float32) for name, shape in config.parameter_shapes().items()}
    return assemble_program(config, parameters, lambda name: 1.0, {"method": "none", "images": 0})


def assemble_program(config: ViTConfig, parameters: dict[str, np.ndarray], activation_range: Callable[[str], float],
                     calibration: dict) -> IntProgram:
    """The integer program of a ViT from its float parameters and calibrated activation ranges.

    Parameters
    ----------
    config : ViTConfig
    parameters : dict of timm parameter name -> float array
        The float model's ``state_dict`` as numpy arrays (``ViTConfig.parameter_shapes`` names them).
    activation_range : callable
        The calibrated |x| bound of an activation by its name (``ActivationRanges.range``).
    calibration : dict
        Recorded in the program as how it was calibrated.
    """
    cfg = config
    scale = lambda name: activation_range(name) / INT8_LEVELS

    b = _Builder()
    s_in = scale("input")
    b.tensors["input"] = TensorInfo(s_in, 8, "input")

    # Patch embedding: the prefix tokens share the patch scale, then the position embedding is added.
    names = [n for n in ("cls_token", "dist_token") if n in parameters]
    prefix = [np.asarray(parameters[n], dtype=np.float64).reshape(-1) for n in names]
    s_patch = max([activation_range("patch_embed")] + [float(np.abs(t).max()) for t in prefix]) / INT8_LEVELS
    b.op("patchify", "patch_embed.patchify", ["input"], ["patch_embed.patches"], [TensorInfo(s_in, 8)],
         patch=cfg.patch_size)
    w, bias = _params(parameters, "patch_embed.proj")
    tokens = b.linear("patch_embed.proj", "patch_embed.patches", s_in, w, bias, "patch_embed", s_patch)
    # Each concat prepends, so the distillation token goes first and the class token ends up at 0.
    for i in reversed(range(len(names))):
        token = b.const(names[i], np.rint(prefix[i] / s_patch), np.int8)
        tokens = b.op("concat_token", names[i], [tokens, token], ["tokens" if i == 0 else f"{names[i]}.tokens"],
                      [TensorInfo(s_patch, 8)])
    pos = np.asarray(parameters["pos_embed"][0], dtype=np.float64)
    s_pos = max(float(np.abs(pos).max()), 1e-12) / INT8_LEVELS
    b.const("pos_embed", np.rint(pos / s_pos), np.int8)
    x, s_x = "embed", scale("embed")
    b.add("pos_embed", tokens, s_patch, "pos_embed", s_pos, s_x, x)

    head_dim_scale = cfg.head_dim**-0.5
    for i in range(cfg.depth):
        p = f"blocks.{i}"
        s_ln1 = scale(f"{p}.norm1")
        b.layernorm(f"{p}.norm1", x, _params(parameters, f"{p}.norm1"), s_ln1, f"{p}.norm1")

        # Attention: q|k|v leave one matmul on three per-segment scales.
        s_q, s_k, s_v = (scale(f"{p}.attn.{part}") for part in "qkv")
        w, bias = _params(parameters, f"{p}.attn.qkv")
        qkv_scale = np.repeat([s_q, s_k, s_v], cfg.embed_dim)
        b.linear(f"{p}.attn.qkv", f"{p}.norm1", s_ln1, w, bias, f"{p}.attn.qkv", qkv_scale)
        b.op("split_heads", f"{p}.attn.split", [f"{p}.attn.qkv"], [f"{p}.attn.{t}" for t in "qkv"],
             [TensorInfo(s, 8, f"{p}.attn.{t}") for s, t in zip((s_q, s_k, s_v), "qkv")], heads=cfg.num_heads)
        b.op("matmul", f"{p}.attn.qk", [f"{p}.attn.q", f"{p}.attn.k"], [f"{p}.attn.qk.acc"],
             [TensorInfo(s_q * s_k, 32)], transpose_b=1)
        b.requant(f"{p}.attn.qk", f"{p}.attn.qk.acc", s_q * s_k * head_dim_scale * 2.0**SOFTMAX_INPUT_FRAC_BITS,
                  f"{p}.attn.scores", TensorInfo(2.0**-SOFTMAX_INPUT_FRAC_BITS, 32, f"{p}.attn.scores"))
        s_probs = 2.0**-SOFTMAX_OUTPUT_FRAC_BITS
        b.op("softmax", f"{p}.attn.softmax", [f"{p}.attn.scores"], [f"{p}.attn.probs"],
             [TensorInfo(s_probs, 8, f"{p}.attn.probs")])
        s_ctx = scale(f"{p}.attn.context")
        b.op("matmul", f"{p}.attn.av", [f"{p}.attn.probs", f"{p}.attn.v"], [f"{p}.attn.av.acc"],
             [TensorInfo(s_probs * s_v, 32)])
        b.requant(f"{p}.attn.av", f"{p}.attn.av.acc", s_probs * s_v / s_ctx, f"{p}.attn.av", TensorInfo(s_ctx, 8))
        b.op("merge_heads", f"{p}.attn.merge", [f"{p}.attn.av"], [f"{p}.attn.context"],
             [TensorInfo(s_ctx, 8, f"{p}.attn.context")])
        s_proj = scale(f"{p}.attn.proj")
        w, bias = _params(parameters, f"{p}.attn.proj")
        b.linear(f"{p}.attn.proj", f"{p}.attn.context", s_ctx, w, bias, f"{p}.attn.proj", s_proj)
        s_res = scale(f"{p}.residual")
        b.add(f"{p}.residual", x, s_x, f"{p}.attn.proj", s_proj, s_res, f"{p}.residual")

        # MLP: fc1 -> Q.10 -> GELU -> Q.21 -> INT8 -> fc2.
        s_ln2 = scale(f"{p}.norm2")
        b.layernorm(f"{p}.norm2", f"{p}.residual", _params(parameters, f"{p}.norm2"), s_ln2, f"{p}.norm2")
        w, bias = _params(parameters, f"{p}.mlp.fc1")
        b.linear(f"{p}.mlp.fc1", f"{p}.norm2", s_ln2, w, bias, f"{p}.mlp.fc1", 2.0**-GELU_INPUT_FRAC_BITS,
                 bits=GELU_INPUT_BITS)
        b.op("gelu", f"{p}.mlp.gelu", [f"{p}.mlp.fc1"], [f"{p}.mlp.gelu"],
             [TensorInfo(2.0**-GELU_OUTPUT_FRAC_BITS, 32, f"{p}.mlp.act")])
        s_act = scale(f"{p}.mlp.act")
        b.requant(f"{p}.mlp.act", f"{p}.mlp.gelu", 2.0**-GELU_OUTPUT_FRAC_BITS / s_act, f"{p}.mlp.act",
                  TensorInfo(s_act, 8, f"{p}.mlp.act"))
        s_fc2 = scale(f"{p}.mlp.fc2")
        w, bias = _params(parameters, f"{p}.mlp.fc2")
        b.linear(f"{p}.mlp.fc2", f"{p}.mlp.act", s_act, w, bias, f"{p}.mlp.fc2", s_fc2)
        s_out = scale(p)
        x = b.add(p, f"{p}.residual", s_res, f"{p}.mlp.fc2", s_fc2, s_out, p)
        s_x = s_out

    _head(b, cfg, parameters, x, s_x, scale)
    return IntProgram(cfg, b.ops, b.constants, b.tensors, input_scale=s_in, output="logits", calibration=calibration)
