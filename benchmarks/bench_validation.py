"""Benchmark: one validation of a quick-profile trial, with and without the surface distances it never reads.

The engine validates every ``eval.val_every`` steps and selects the model by mean Dice alone. It used to run the
full evaluation (``mean_dice(evaluate_volumes(...))``: Dice, Jaccard, HD95, ASD, ASSD per case and class); it now
runs :func:`medseg_platform.engine.validation_dice` (prediction plus Dice from one histogram). Timed here on the
quick profile's val volumes of the embedded phantom (generated into ``$MEDSEG_CACHE`` if missing) with a
quarter-width UNet, alternated in one process, 1 thread as a trial runs. ``--checkpoint`` takes a trial's
``checkpoint/checkpoint.pt`` (its selected weights), so the predictions look like a trained model's; without it the
UNet is random (its predictions are noisier, so the distances cost more).

Printed: the median seconds of each, their ratio, and whether the two scores are equal (they must be, to the bit).

Run:  python benchmarks/bench_validation.py [--repeats 7] [--checkpoint RESULTS/.../checkpoint/checkpoint.pt]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from medseg_platform.study_flags import count_at_least  # noqa: E402


def quick_validation():
    """``(cfg, val volumes, model)``: the quick profile's config on the embedded phantom (generated into
    ``$MEDSEG_CACHE`` if missing), its val volumes, and a quarter-width UNet seeded with 0."""
    import torch

    from medseg_platform.data.layout import AcdcLayout
    from medseg_platform.data.phantom import ensure_phantom
    from medseg_platform.profiles import PROFILES
    from medseg_platform.study_flags import default_cache_root
    from methods.registry import build_model

    profile = PROFILES["quick"]
    root = ensure_phantom(default_cache_root(), **profile.phantom)
    cfg = profile.trial.replace(**{"data.root": str(root)})
    layout = AcdcLayout(root, cfg.data.num_classes)
    torch.manual_seed(0)
    model = build_model("unet", num_classes=cfg.data.num_classes, channels=cfg.model.channels)
    return cfg, [layout.read_volume(c) for c in layout.val_cases], model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=count_at_least(1), default=7)
    parser.add_argument("--checkpoint", type=Path, default=None, help="a trial's checkpoint.pt (its best_state is loaded)")
    args = parser.parse_args()
    if args.checkpoint is not None and not args.checkpoint.is_file():
        parser.error(f"--checkpoint {args.checkpoint}: no such file (give a trial's checkpoint/checkpoint.pt)")

    import torch

    from medseg_platform.engine import evaluate_volumes, mean_dice, validation_dice

    torch.set_num_threads(1)
    cfg, volumes, model = quick_validation()
    if args.checkpoint is not None:
        from medseg_platform.engine.checkpoint import load_checkpoint

        state = load_checkpoint(args.checkpoint, remedy="give a trial's checkpoint/checkpoint.pt")
        if "best_state" not in state:
            parser.error(f"--checkpoint {args.checkpoint}: holds no best_state (a stage's checkpoint? give a fine-tuning trial's)")
        model.load_state_dict(state["best_state"])
    model.eval()
    device = torch.device("cpu")

    full, dice_only = [], []
    scores = set()
    for _ in range(args.repeats + 1):  # the first round warms up
        t0 = time.perf_counter()
        scores.add(mean_dice(evaluate_volumes(model, volumes, cfg, device)))
        full.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        scores.add(validation_dice(model, volumes, cfg, device))
        dice_only.append(time.perf_counter() - t0)
    a, b = statistics.median(full[1:]), statistics.median(dice_only[1:])
    print(f"{len(volumes)} val volumes, quick profile, {'trained' if args.checkpoint else 'random'} UNet, "
          f"median of {args.repeats}: full evaluation {a * 1e3:.0f} ms, Dice only {b * 1e3:.0f} ms ({b / a:.2f}x); "
          f"scores equal: {len(scores) == 1}")


if __name__ == "__main__":
    main()
