"""How hard is the phantom? Supervised Dice with few vs all labelled patients (CPU, a few minutes).

Trains a small self-contained UNet (written here, about 57 000 parameters) on the training slices of the first
``k`` training patients (for each ``k`` in ``--labelled``, ``all`` = every training patient) for the same
number of steps, then reports the mean foreground Dice (RV, Myo, LV averaged; per volume, then over the
test volumes) on the phantom's test split. A large gap between 1 patient and all patients means the
phantom leaves room for semi-supervised methods; a high "all" score means it is learnable.

Usage::

    .venv/bin/python benchmarks/phantom_gap.py                       # its default phantom (20 x 128 px), 1 vs all
    .venv/bin/python benchmarks/phantom_gap.py --labelled 1 3 all --steps 800

Slices are resized to ``--input`` px square (bilinear image, nearest label) as the platform does for
training; predictions are resized back to the native size before scoring. No augmentation.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medseg_platform.data.layout import AcdcLayout  # noqa: E402
from medseg_platform.data.phantom import ensure_phantom  # noqa: E402
from medseg_platform.study_flags import count_at_least, default_cache_root  # noqa: E402

NUM_CLASSES = 4


# ------------------------------------------------------------------------------------- model
def _block(c_in: int, c_out: int) -> nn.Sequential:
    """Two 3×3 conv + BatchNorm + ReLU layers."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )


class TinyUNet(nn.Module):
    """A 4-level UNet: (B, 1, H, W) float -> (B, classes, H, W) logits; H, W divisible by 8."""

    def __init__(self, widths: tuple[int, ...] = (8, 16, 24, 32), classes: int = NUM_CLASSES):
        super().__init__()
        self.down = nn.ModuleList(_block(c_in, c_out) for c_in, c_out in zip((1,) + widths[:-1], widths))
        self.up = nn.ModuleList(_block(widths[i] + widths[i + 1], widths[i]) for i in range(len(widths) - 1))
        self.head = nn.Conv2d(widths[0], classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for block in reversed(self.up):
            skip = skips.pop()
            x = block(torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False), skip], 1))
        return self.head(x)


# -------------------------------------------------------------------------------------- data
def _resize_image(image: np.ndarray, size: int) -> torch.Tensor:
    """(..., H, W) float32 -> (N, 1, size, size) bilinear."""
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).reshape(-1, 1, *image.shape[-2:])
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)


def _resize_label(label: np.ndarray, size: int) -> torch.Tensor:
    """(..., H, W) uint8 -> (N, size, size) int64, nearest."""
    t = torch.from_numpy(np.ascontiguousarray(label)).reshape(-1, 1, *label.shape[-2:]).float()
    return F.interpolate(t, size=(size, size), mode="nearest")[:, 0].long()


def load_slices(data: AcdcLayout, slice_ids: list[str], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Training slices as (N, 1, size, size) float32 images and (N, size, size) int64 labels."""
    pairs = [data.read_slice(s) for s in slice_ids]
    images = torch.cat([_resize_image(im, size) for im, _ in pairs])
    labels = torch.cat([_resize_label(lab, size) for _, lab in pairs])
    return images, labels


# --------------------------------------------------------------------------------- train/eval
def soft_dice_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """1 - mean soft Dice over classes; logits (B, C, H, W), labels (B, H, W) int64."""
    probs = logits.softmax(1)
    onehot = F.one_hot(labels, logits.shape[1]).permute(0, 3, 1, 2).float()
    inter = (probs * onehot).sum((0, 2, 3))
    denom = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    return 1.0 - ((2 * inter + 1e-5) / (denom + 1e-5)).mean()


def train(images: torch.Tensor, labels: torch.Tensor, steps: int, batch: int, seed: int) -> TinyUNet:
    """Train a fresh TinyUNet with CE + Dice (Adam 3e-3, cosine decay) on randomly drawn batches."""
    torch.manual_seed(seed)
    model = TinyUNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, images.shape[0], (batch,), generator=gen)
        logits = model(images[idx])
        loss = F.cross_entropy(logits, labels[idx]) + soft_dice_loss(logits, labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model


def dice_per_class(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Dice of classes 1..C-1 for one volume (D, H, W) int arrays; NaN where both are empty."""
    out = np.full(NUM_CLASSES - 1, np.nan)
    for c in range(1, NUM_CLASSES):
        p, t = pred == c, truth == c
        denom = p.sum() + t.sum()
        if denom:
            out[c - 1] = 2.0 * np.logical_and(p, t).sum() / denom
    return out


@torch.no_grad()
def evaluate(model: TinyUNet, data: AcdcLayout, size: int) -> np.ndarray:
    """Per-volume, per-class Dice (V, 3) on the test split; predictions resized back to native size."""
    model.eval()
    rows = []
    for case in data.test_cases:
        vol = data.read_volume(case)
        logits = model(_resize_image(vol.image, size))
        logits = F.interpolate(logits, size=vol.image.shape[-2:], mode="bilinear", align_corners=False)
        rows.append(dice_per_class(logits.argmax(1).numpy(), vol.label))
    return np.array(rows)


def _patients(text: str) -> str:
    """An argparse ``type`` for ``--labelled``: 'all' or a whole number >= 1 (kept as text)."""
    if text == "all" or (text.isdigit() and int(text) >= 1):
        return text
    raise argparse.ArgumentTypeError(f"expected 'all' or a whole number >= 1, got {text!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=count_at_least(3, 999), default=20)
    parser.add_argument("--size", type=count_at_least(32, 1024), default=128, help="phantom size")
    parser.add_argument("--seed", type=int, default=0, help="phantom seed")
    parser.add_argument("--labelled", nargs="+", type=_patients, default=["1", "all"],
                        help="labelled patient counts (at most the phantom's training patients), or 'all'")
    parser.add_argument("--steps", type=count_at_least(1), default=400)
    parser.add_argument("--batch", type=count_at_least(1), default=8)
    parser.add_argument("--input", type=count_at_least(8), default=96, help="training resolution (square; the net pools 3 times)")
    parser.add_argument("--train-seed", type=int, default=0)
    parser.add_argument("--threads", type=count_at_least(1), default=2)
    parser.add_argument("--cache", default=None,
                        help="phantom cache folder (default: $MEDSEG_CACHE, else ~/.cache/medseg-platform, as the studies')")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    root = ensure_phantom(args.cache or default_cache_root(), args.patients, args.size, args.seed)
    data = AcdcLayout(root)
    too_many = [k for k in args.labelled if k != "all" and int(k) > len(data.train_patients)]
    if too_many:
        parser.error(f"--labelled {' '.join(too_many)}: the phantom has {len(data.train_patients)} training patients "
                     f"(of --patients {args.patients}); give at most that many, or 'all'")
    print(f"phantom: {data} ({time.perf_counter() - start:.1f} s); model params: {sum(p.numel() for p in TinyUNet().parameters())}")
    for k in args.labelled:
        patients = data.train_patients if k == "all" else data.train_patients[: int(k)]
        images, labels = load_slices(data, data.slices_of_patients(patients), args.input)
        t0 = time.perf_counter()
        model = train(images, labels, args.steps, args.batch, args.train_seed)
        dice = evaluate(model, data, args.input)
        per_class = np.nanmean(dice, axis=0)
        print(
            f"labelled={k:>3} patients ({len(patients)} pts, {images.shape[0]} slices): "
            f"mean fg Dice {np.nanmean(dice):.3f}  [RV {per_class[0]:.3f}  Myo {per_class[1]:.3f}  LV {per_class[2]:.3f}]"
            f"  ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
