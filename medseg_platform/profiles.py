"""Study profiles and the command line every study script shares.

Profiles differ only in numbers, never in code paths:

* ``smoke``  -- the ``--smoke-test`` flag: tiny phantom, 32x32 patches, a few steps; proves the path works.
* ``quick``  -- a laptop CPU, sized for the default study (``ablation_tailness.py``: 8 rows x 3 seeds at 1 labelled
  patient) to take about 10 minutes on a 2-core machine whose supervised quick step is 40 ms
  (``benchmarks/bench_methods.py``; measured 5.9-6.6 min on one whose step is 19 ms): the embedded phantom with 40
  patients (so 8 test and 4 val patients, 16 and 8 volumes), 48x48 patches, a quarter-width UNet, 250 fine-tuning
  steps validated every 25, 40 pretraining steps per ISD stage, seeds 1, 2, 3. How it was chosen
  (``benchmarks/RESULTS.md``, "The quick profile"; in-process trials on this phantom, test Dice averaged over
  seeds):

  - learning rate 0.1 (10x the released 0.01, for a schedule 120x shorter): supervised at 1 patient and 250 steps
    scored 33.0 / 44.9 / 54.4 at 0.02 / 0.05 / 0.1 (4 seeds); at 0.1 every method trained without a non-finite loss.
  - 250 steps: what the budget pays for with 3 seeds. With the poly schedule the validation curves are flat at the
    end (the report's trial health checks it), but the semi-supervised rows are not at their best: at 600 steps (old
    profile, one seed) MONA, ARCO-SG and mean teacher overtook supervised-only, at 250 they trail it. The quick
    table tests the pipeline and shows seed spread; it does not rank the methods.
  - more labelled patients need more steps: at 250 steps supervised scored 54.4 / 55.5 / 48.0 at 1 / 3 / 7 patients
    (3 seeds), at 500 steps 7 patients scored 65.2 and 72.8 (2 seeds, validated every 50 steps).
    At 500 steps (3 seeds, validated every 25) supervised scored 55.7 / 68.2 / 60.6 at 1 / 3 / 7 patients (one
    7-patient seed selected a noisy early validation peak); at 750 steps 55.6 / 61.1 / 74.5, rising with the
    patients. ``label_fractions.py`` therefore trains the quick profile for :data:`QUICK_FRACTION_STEPS` (750). Per
    seed the order still breaks (seed 3: 56.1 / 48.5 / 75.6): with 4 val patients, model selection is noisy.
  - the 40-step pretraining stages neither clearly help nor hurt (fine-tuned from random initialisation instead:
    MONA 39.3 vs 43.0, ARCO-SG 48.3 vs 46.3, ACTION 55.0 vs 52.5, 2-3 seeds, differences inside the seed spread);
    they are kept because they are part of each method.
  - **ACTION's collapse at 3 patients in the previous profile (lr 0.05, 300 steps) was the profile, not the code.**
    ACTION as released trains ``0.5 (CE + Dice) + L_unsup`` with a resize-only weak view. L_unsup weights every
    unlabelled pixel's cross-entropy to the teacher's pseudo-label by the fraction of confident pixels in its image;
    early on the teacher is confidently background almost everywhere, so that weight is near 1 and L_unsup pulls the
    student (and through the EMA the teacher) towards background. With half the supervised weight and a slow
    learning rate the supervised signal lost that race in 2 of 3 seeds (test Dice 13.7 / 8.1 / 49.8). The loss
    equals the released code's; with the full supervised weight the same runs scored 66.1 / 70.6 / 56.3, and at this
    profile's learning rate the released ACTION at 3 patients (500 steps)
    scored 74.0 / 75.9 / 76.3. ``tests/methods/test_losses.py`` pins the weighting that drives it; the report flags
    any trial whose validation Dice collapses (``analysis/health.py``).
* ``paper``  -- a GPU cluster: ACDC (``--data-root``) at 256x256, the released UNet and 30 000 steps
  (``docs/methods.md``), 3 seeds.

A study script declares its variants (table rows) and axes and calls :func:`analysis.study_cli.run_study_main`, which
parses :func:`study_parser`'s flags, runs the study and writes its report.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from medseg_platform.config import DataConfig, EvalConfig, ModelConfig, OptimConfig, TrialConfig, resolve_path
from medseg_platform.errors import MedsegError
from medseg_platform.overrides import STUDY_FLAG_KEYS, check_key, config_fields, parse_value


@dataclass(frozen=True)
class MethodSizes:
    """The numbers the contrastive methods scale with (methods-spec §7); ``paper`` = the released values."""

    pretrain_steps: int
    anchors: int  # MONA/ARCO anchors per class, ACTION queries per class
    negatives: int  # negatives per anchor
    bank_background: int
    bank_foreground: int
    nn_pool_resolution: int | str  # "full" as released (K x 496·256·256 floats), or g: g x g average pool
    isd_latent: int
    action_repr: int


@dataclass(frozen=True)
class Profile:
    name: str
    trial: TrialConfig
    labelled: tuple[str, ...]  # label fractions: the table's columns
    seeds: tuple[int, ...]
    phantom: dict | None  # parameters of the embedded dataset (None: --data-root required)
    methods: MethodSizes
    cpus_per_trial: float = 1.0


def _cfg(patch: int, channels, steps: int, val_every: int, log_every: int, val_cases: int = 0, threads: int = 1,
         lr: float = 0.01) -> TrialConfig:
    return TrialConfig(
        data=DataConfig(patch_size=(patch, patch)),
        model=ModelConfig(channels=tuple(channels)),
        optim=OptimConfig(max_steps=steps, lr=lr),
        eval=EvalConfig(val_every=val_every, log_every=log_every, val_cases=val_cases),
        threads=threads,
    )


QUICK_STEPS = 250  # fine-tuning steps of the quick profile (see the module docstring for how it was chosen)
QUICK_FRACTION_STEPS = 750  # label_fractions.py at the quick profile: 3 and 7 patients need more steps than 1

PROFILES = {
    "smoke": Profile("smoke", _cfg(32, (4, 8, 16, 32, 64), steps=6, val_every=3, log_every=3),
                     labelled=("1",), seeds=(1,), phantom={"patients": 6, "size": 40, "seed": 0},
                     methods=MethodSizes(pretrain_steps=3, anchors=16, negatives=32, bank_background=512, bank_foreground=256,
                                         nn_pool_resolution=8, isd_latent=32, action_repr=32)),
    "quick": Profile("quick", _cfg(48, (4, 8, 16, 32, 64), steps=QUICK_STEPS, val_every=25, log_every=25, lr=0.1),
                     labelled=("1",), seeds=(1, 2, 3), phantom={"patients": 40, "size": 96, "seed": 0},
                     methods=MethodSizes(pretrain_steps=40, anchors=64, negatives=128, bank_background=5000, bank_foreground=3000,
                                         nn_pool_resolution=12, isd_latent=128, action_repr=64)),
    "paper": Profile("paper", _cfg(256, (16, 32, 64, 128, 256), steps=30000, val_every=1000, log_every=100, threads=4),
                     labelled=("1", "3", "7"), seeds=(1337, 1338, 1339), phantom=None, cpus_per_trial=4.0,
                     methods=MethodSizes(pretrain_steps=30000, anchors=256, negatives=512, bank_background=50000,
                                         bank_foreground=30000, nn_pool_resolution="full", isd_latent=512, action_repr=512)),
}

#: Table rows of the methods, in the order of ARCO's tables. Each maps to (objective, objective_params,
#: pretraining chain name); see :func:`method_variant`.
METHODS = ("supervised", "mean_teacher", "mona", "arco_sg", "arco_sag", "action")
METHOD_LABELS = {"supervised": "Supervised only", "mean_teacher": "Mean teacher", "mona": "MONA", "arco_sg": "ARCO-SG",
                 "arco_sag": "ARCO-SAG", "action": "ACTION"}


def with_steps(profile: Profile, steps: int) -> Profile:
    """``profile`` with ``steps`` fine-tuning steps (the schedules :func:`method_overrides` derives follow)."""
    return replace(profile, trial=profile.trial.replace(**{"optim.max_steps": int(steps)}))


def _isd_stage(profile: Profile, preset: str) -> dict:
    from methods.isd_pretrain import PRESETS

    patch = profile.trial.data.patch_size[0]
    sizes = {"image_size": patch, "window": patch // 4, "stride": patch // 8, "latent_dim": profile.methods.isd_latent}
    return {"objective": "isd_pretrain", "objective_params": {**PRESETS[preset], **sizes}, "max_steps": profile.methods.pretrain_steps,
            "checkpoint_every": max(1, min(1000, profile.methods.pretrain_steps // 3))}


def method_overrides(method: str, profile: Profile, without_contrast: bool = False) -> dict:
    """Dotted config overrides of one table row at a profile's sizes (released settings otherwise).

    * MONA = ARCO's pipeline with the uniform sampler (methods-spec §0, §3), one ISD stage (MONA preset);
    * ARCO-SG / ARCO-SAG: the stratified / stratified-antithetic sampler (§4);
    * ACTION: two ISD stages (stage i: global only, encoder only; stage ii: global + local + 0.5 sup), then
      the anatomical contrast (§2);
    * ``without_contrast``: the pixel-contrast weight 0 (ARCO Table 2's "w/o L_contrast"; the term is not
      computed at all).
    The α_t entropy schedule counts "epochs" of ``steps_per_epoch``; the released run has 30 000 steps of
    322 (about 94 epochs), kept as a proportion: ``max_steps // 94``.
    """
    m, steps = profile.methods, profile.trial.optim.max_steps
    if method == "supervised":
        return {"objective": "supervised", "objective_params": {}}
    if method == "mean_teacher":
        return {"objective": "mean_teacher", "objective_params": {"rampup_steps": steps}}
    if method in ("mona", "arco_sg", "arco_sag"):
        params = {"num_anchors": m.anchors, "num_negatives": m.negatives, "bank_capacity_background": m.bank_background,
                  "bank_capacity_foreground": m.bank_foreground, "nn_pool_resolution": m.nn_pool_resolution,
                  "steps_per_epoch": max(1, steps // 94),
                  "sampler": {"mona": "uniform", "arco_sg": "stratified", "arco_sag": "stratified_antithetic"}[method]}
        if without_contrast:
            params["contrast_weight"] = 0.0
        return {"objective": "arco" if method.startswith("arco") else "mona", "objective_params": params,
                "pretrain": [_isd_stage(profile, "mona")]}
    if method == "action":
        params = {"num_queries": m.anchors, "num_negatives": m.negatives, "repr_dim": m.action_repr}
        if without_contrast:
            params["anco_weight"] = 0.0
        return {"objective": "action", "objective_params": params,
                "pretrain": [_isd_stage(profile, "action_stage_i"), _isd_stage(profile, "action_stage_ii")],
                # ACTION's weak view: resize only, cubic image zoom (methods-spec §1.3, bug §8.12)
                "data.image_resize": "bicubic", "data.weak_rot90_flip_p": 0.0, "data.weak_rotate_p": 0.0}
    raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")


def profile_with_overrides(profile: Profile, sets: dict[str, str], flags: dict[str, str] = STUDY_FLAG_KEYS) -> Profile:
    """``profile`` with the ``--set`` overrides of its config's sections (``optim.max_steps``, ``data.patch_size``, ...;
    not the objective's), so that what :func:`method_overrides` derives from them follows: the schedules from the
    step count (mean teacher's ramp-up, the α_t epochs), the ISD stages' image and window sizes from the patch."""
    values = {}
    for key, text in sets.items():
        if key != "objective" and not key.startswith("objective_params."):
            check_key(key, flags)
            values[key] = parse_value(key, text, config_fields()[key])
    return replace(profile, trial=profile.trial.replace(**values)) if values else profile


def default_cache_root() -> Path:
    """Where the embedded dataset is cached: ``$MEDSEG_CACHE`` or ``~/.cache/medseg-platform``."""
    return Path(os.environ.get("MEDSEG_CACHE", Path.home() / ".cache" / "medseg-platform")).expanduser().resolve()


def study_parser(description: str, default_name: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=f"example:\n  python {sys.argv[0]} --smoke-test")
    parser.add_argument("--profile", choices=("quick", "paper"), default="quick", help="problem size (default: quick, a laptop CPU)")
    parser.add_argument("--smoke-test", action="store_true", help="tiny sizes: checks the whole path in about a minute")
    parser.add_argument("--address", default=None, help="join an existing Ray cluster (default: $RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--results-dir", default="results", help="where results go (default: ./results)")
    parser.add_argument("--data-root", default=None, help="dataset root in the SSL4MIS/ACDC layout (default: the embedded phantom)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default: the profile's)")
    parser.add_argument("--name", default=default_name, help=f"study name (default: {default_name}-<profile>)")
    parser.add_argument("--max-concurrent", type=int, default=None, help="at most this many trials at once")
    parser.add_argument("--gpus-per-trial", type=float, default=0.0, help="GPUs per trial (default 0: CPU)")
    parser.add_argument("--cpus-per-trial", type=float, default=None, help="CPUs per trial (default: the profile's)")
    parser.add_argument("--num-workers", type=int, default=1,
                        help="processes per trial; > 1 trains data-parallel through Ray Train (CPUs/GPUs per trial are per worker)")
    parser.add_argument("--no-dashboard", action="store_true", help="do not start the Ray dashboard (local Ray only)")
    parser.add_argument("--amp", choices=("off", "bf16", "fp16"), default="off",
                        help="mixed precision of the forward pass and losses (default off; bf16 runs on CPU and GPU, fp16 needs --gpus-per-trial)")
    parser.add_argument("--max-retries", type=int, default=2, metavar="N",
                        help="restart a trial whose worker process died up to N times from its last checkpoint (default 2; "
                             "NaN losses and other deterministic errors are never retried)")
    parser.add_argument("--dashboard-host", default="127.0.0.1", metavar="HOST",
                        help="address the local Ray's dashboard binds to (default 127.0.0.1; anything else exposes job "
                             "submission to the network and prints a warning: prefer an SSH tunnel)")
    parser.add_argument("--optuna-storage", default=None, metavar="PATH",
                        help="search studies only: also record the Optuna study in this journal file (optuna-dashboard PATH)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a config value of every trial, e.g. --set optim.lr=0.02 --set objective_params.temperature=0.2 "
                             "(repeatable; typed like the config field; an error if a row sets the key itself or its objective lacks it)")
    parser.add_argument("--rows", nargs="+", default=None, metavar="NAME",
                        help="run only these table rows (names as the table prints them; quote names with spaces)")
    parser.add_argument("--dry-run", action="store_true",
                        help="list the trials (status, estimated cost) and the estimated wall time; start and train nothing")
    parser.add_argument("--test-root", default=None, metavar="ROOT",
                        help="also score every trial's selected weights on this dataset's test split (same classes as the "
                             "study's data); tables and report show it as its own block. Trials finished without it are "
                             "scored from their checkpoints, without training")
    return parser


def resolve_data_root(args, profile: Profile) -> Path:
    """``--data-root`` resolved, or the cached phantom (generated on first use)."""
    if args.data_root:
        return resolve_path(args.data_root, "--data-root")
    if profile.phantom is None:
        raise MedsegError(f"profile {profile.name}: needs --data-root (an ACDC dataset converted with 'medseg data convert-acdc')")
    from medseg_platform.data.phantom import ensure_phantom

    return Path(ensure_phantom(default_cache_root(), **profile.phantom))
