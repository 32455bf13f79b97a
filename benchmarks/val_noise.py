"""Diagnostic: how much a finished trial's validation Dice moves when its weights do not.

The report's trial health calls a trial "still rising" when its last validation beats the previous one by more than
1 val Dice point (``analysis.health.RISING_MARGIN``). Part of that could be the student's BatchNorm running statistics,
which a validation reads and every training step moves. This script loads a finished trial's checkpoint (its final
state), runs ``--steps`` more loop steps at learning rate 0 (the first at the checkpoint's own last rate, about 7e-4
at the quick profile's end, then 0: the weights stay where they were, the running statistics move as in training) and
validates every ``--every`` steps. Printed per trial: its own last three validations, then the mean, standard
deviation and range of the frozen-weight validations, in val Dice points. 1 thread, as a trial runs.

Run:  python benchmarks/val_noise.py RESULTS/ablation_tailness-quick [--trials mean_teacher-l1-s3 action-l1-s1]
          [--steps 100] [--every 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from medseg_platform.study_flags import count_at_least  # noqa: E402


def frozen_validations(trial: Path, steps: int, every: int) -> tuple[list[float], list[float]]:
    """(the trial's recorded validations, the frozen-weight ones), in val Dice points."""
    import torch

    from medseg_platform.config import TrialConfig
    from medseg_platform.data.splits import epoch_steps
    from medseg_platform.engine.checkpoint import load_checkpoint, restore_training_state
    from medseg_platform.engine.conv_kernels import trial_conv_kernels, using_conv_kernels
    from medseg_platform.engine.evaluate import validation_dice
    from medseg_platform.engine.loop import TrainLoop, build_trial_model, data_generator, make_optimizer
    from medseg_platform.engine.training_data import load_training_data
    from medseg_platform.recipes import LABELLED_SET_EPOCH, with_epoch_length
    from methods.registry import build_objective

    device = torch.device("cpu")
    cfg = TrialConfig.from_dict(json.loads((trial / "config.json").read_text(encoding="utf-8"))["config"])
    data = load_training_data(cfg, lambda message: None)
    volumes = [data.layout.read_volume(case) for case in data.layout.val_cases]
    params = dict(cfg.objective_params)
    if params.get("steps_per_epoch") == LABELLED_SET_EPOCH:  # as the engine fills it in
        params, _ = with_epoch_length(params, epoch_steps(data.subset, cfg.data.unlabelled_batch))
    objective = build_objective(cfg.objective, build_trial_model(cfg, device), params)
    optimizer = make_optimizer(cfg, list(objective.trainable_parameters()))
    generator = data_generator(cfg.seed, None)
    state = load_checkpoint(trial / "checkpoint" / "checkpoint.pt", remedy="give a finished trial's folder")
    step = restore_training_state(state, objective, optimizer, generator, cfg.seed, None)
    values = []
    with using_conv_kernels(trial_conv_kernels(cfg, "cpu")):
        loop = TrainLoop(cfg, objective, optimizer, data, generator, device, None, step + steps + 1, cfg.data.labelled_batch,
                         cfg.data.unlabelled_batch, 0.0, cfg.optim.poly_power, "fine-tuning", lr_step=cfg.optim.lr_step)
        for extra in range(steps):
            loop.step(step + extra)
            if (extra + 1) % every == 0:
                values.append(100 * validation_dice(objective.eval_model(), volumes, cfg, device))
    return [100 * row["val_dice"] for row in state["val_curve"]], values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", type=Path, help="a finished study folder (its trials/ hold the checkpoints)")
    parser.add_argument("--trials", nargs="+", default=None, metavar="PREFIX",
                        help="trial folder name prefixes (default: every trial)")
    parser.add_argument("--steps", type=count_at_least(2), default=100)
    parser.add_argument("--every", type=count_at_least(1), default=10)
    args = parser.parse_args()
    trials_dir = args.study / "trials"
    if not trials_dir.is_dir():
        parser.error(f"{args.study}: no trials/ folder (give a study folder, e.g. results/ablation_tailness-quick)")
    folders = sorted(p for p in trials_dir.iterdir() if (p / "checkpoint" / "checkpoint.pt").is_file())
    if args.trials:
        folders = [p for p in folders if any(p.name.startswith(prefix) for prefix in args.trials)]
    if not folders:
        parser.error(f"{trials_dir}: no trial with a checkpoint matches {' '.join(args.trials or ['*'])}")
    if args.steps // args.every < 2:
        parser.error(f"--every {args.every}: gives fewer than 2 validations in --steps {args.steps}")
    import torch

    torch.set_num_threads(1)
    for folder in folders:
        recorded, frozen = frozen_validations(folder, args.steps, args.every)
        print(f"{folder.name:32s} last validations {', '.join(f'{v:.1f}' for v in recorded[-3:])}; frozen weights: mean "
              f"{statistics.mean(frozen):.1f}, std {statistics.stdev(frozen):.2f}, range {min(frozen):.1f}-{max(frozen):.1f} "
              f"({len(frozen)} validations over {args.steps} steps)", flush=True)


if __name__ == "__main__":
    main()
