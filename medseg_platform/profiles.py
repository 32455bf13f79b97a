"""Study profiles: the problem sizes every study and ``medseg train`` run at (smoke, quick, paper).

Profiles differ only in numbers, never in code paths:

* ``smoke``  -- the ``--smoke-test`` flag: tiny phantom, 32x32 patches, a few steps; proves the path works.
* ``quick``  -- a laptop CPU, sized for the default study (``ablation_tailness.py``: 8 rows x 3 seeds at 1 labelled
  patient) to take about 10 minutes on a 2-core machine whose supervised quick step is 40 ms
  (``benchmarks/bench_methods.py``; measured 4.6-6.1 min on ones whose step is 12-19 ms, but 11.3-15.6 min on one
  whose step is 37-46 ms, where the contrastive steps cost more per supervised step: that budget is not met,
  ``benchmarks/RESULTS.md``, "The main study on a machine whose supervised quick step is 39-41 ms"): the embedded phantom with 40
  patients (so 8 test and 4 val patients, 16 and 8 volumes), 48x48 patches, a quarter-width UNet, 250 fine-tuning
  steps validated every 25, 40 pretraining steps per ISD stage, seeds 1, 2, 3 (after issue 13's released
  defaults: 365 s on a machine whose step is 24 ms, 3 of 24 trials still rising; with PyTorch's own convolution
  kernels for the contrastive rows, ``conv_kernels`` "auto": 284.6 s on one whose step is 17-19 ms, against 310.5 s
  with oneDNN's, 7 of 24 still rising against 3). How it was chosen
  (``benchmarks/RESULTS.md``, "The quick profile"; in-process trials on this phantom, test Dice averaged over
  seeds; measured before issue 13 made the released learning-rate step, 8-bit strong view, α_t epoch, sampler
  fallback and ISD views the defaults, and with ACTION's rows on torch's bicubic zoom before they took the released
  cubic spline, before the released strong view and MONA/ARCO's discarded pass and on the platform's earlier UNet
  up-path (transposed convolutions), and not re-measured since; with all of them as released the default table's
  rows moved by up to 12 points and 7 of 24 trials ended still rising, ``benchmarks/RESULTS.md``, "The released
  UNet up-path"):

  - learning rate 0.1 (10x the released 0.01, for a schedule 120x shorter): supervised at 1 patient and 250 steps
    scored 33.0 / 44.9 / 54.4 at 0.02 / 0.05 / 0.1 (4 seeds); at 0.1 every method trained without a non-finite loss.
    Re-measured with the released defaults (3 seeds): at 0.2 and 0.3 supervised-only, mean teacher, MONA and ACTION
    all lose 1-9 points of mean test Dice, and ACTION's seed 2 does not learn at 0.3. Re-measured with every
    method as released (2026-12-06): at 0.05 ACTION's rows do not learn on two seeds of three (9 of 24 flagged) while
    the MONA/ARCO rows gain 9-12 points; at 0.2 4 of 24 are flagged against 7 at 0.1, but rows move both ways by up
    to 11 points (``benchmarks/RESULTS.md``, "the learning rate again, with the released network"); 0.1 stays. AdamW at 0.003 helps only
    MONA (from its pretrained stage) and leaves 4 of 12 trials not learning; a half-width UNet (channels 8-128) lifts
    three of four rows by 5-8 points at 1.1-1.4x the time, with as many trials still rising (``benchmarks/RESULTS.md``,
    "neither AdamW nor a half-width UNet buys a converged table either"). A faster-decaying schedule (poly power 2 at lr
    0.2) leaves 1 of 24 trials flagged, but by ending the learning early: six of the eight rows score 2-16 points lower
    (``benchmarks/RESULTS.md``, "a faster-decaying schedule plateaus the curves by stopping them early"); 0.9 stays.
  - 250 steps: what the budget pays for with 3 seeds. The semi-supervised rows are not at their best: at 600 steps (old
    profile, one seed) MONA, ARCO-SG and mean teacher overtook supervised-only, at 250 they trail it, and the report's
    trial health flags 3 of 24 trials (7 with PyTorch's convolution kernels: float rounding moves curves that are
    still climbing across the threshold). At 500 steps (the whole study, 1.9x the wall time) most rows gain 2-12 points
    and 4 of 24 trials are still flagged; ACTION's seed 2 does not learn there (best val Dice 12.9), with or without
    L_anco. Each of four changes alone lets it learn (test 23.2 -> 48.0-66.2): the full supervised weight, no L_unsup,
    MONA's weak view, or random initialisation instead of its cached stage; the released recipe fails that seed
    only with all of them together (see below for the same mechanism at 3 patients). At 750 steps (2.5x the
    default's wall time) every trial but ACTION's plateaued (3 of 24 flagged, all ACTION rows, still climbing) and
    every semi-supervised row was above supervised-only in the mean. Re-measured with every method as released
    (2026-12-06, 3.1x the default's wall time): 2 of 24 flagged (mean teacher seed 3 still rising, ACTION seed 2
    collapsed) and no semi-supervised row above supervised-only (``benchmarks/RESULTS.md``, "Three times the steps
    with the released methods"): the longer run, beyond the budget, where the papers' ordering does not appear at
    this scale. 3 labelled patients instead of 1 at 250 steps flag more trials, not fewer (11 of 24 still rising).
    The quick table tests the pipeline and shows seed spread; it does not rank the methods. Why MONA/ARCO trail
    supervised-only at this scale (``studies/ablation_losses.py``; ``benchmarks/RESULTS.md``, "The loss terms at the
    quick profile"): their unlabelled fine-tuning terms cost, the released L_eqv most (ARCO-SG without it 10.3 points
    higher at 250 steps; MONA/ARCO w/o L_contrast without it 8.1 points higher at 750, ``benchmarks/run_trials.py``).
  - more labelled patients need more steps: at 250 steps supervised scored 54.4 / 55.5 / 48.0 at 1 / 3 / 7 patients
    (3 seeds), at 500 steps 7 patients scored 65.2 and 72.8 (2 seeds, validated every 50 steps).
    At 500 steps (3 seeds, validated every 25) supervised scored 55.7 / 68.2 / 60.6 at 1 / 3 / 7 patients (one
    7-patient seed selected a noisy early validation peak); at 750 steps 55.6 / 61.1 / 74.5, rising with the
    patients. ``label_fractions.py`` therefore trains the quick profile for :data:`QUICK_FRACTION_STEPS` (750). Per
    seed the order still breaks (seed 3: 56.1 / 48.5 / 75.6): with 4 val patients, model selection is noisy.
    Re-measured with every method as released (the UNet's released up-path; 2026-12-06): 63.7 / 70.6 / 69.4 at 750
    steps, rising from 1 to 3 patients for every seed but not from 3 to 7 in the mean (seed 1 at 7 patients selected a
    validation peak and tests at 54.9; seeds 2 and 3 rise at every step up; ``benchmarks/RESULTS.md``,
    "label_fractions at quick"). On an AMD EPYC (2026-12-07) the same code scored 62.2 / 71.0 / 76.1, rising for every
    seed: which validation peak a seed selects moves with the CPU's rounding.
  - 40 patients, not 60: a 60-patient phantom (6 val, 12 test patients) gives a val split closer to its test split
    but harder test patients, wider claim intervals and as many trials still rising (4 of 24 against 3;
    ``benchmarks/RESULTS.md``, "2026-12-05: a 60-patient phantom does not make the default table more informative").
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
    any trial whose validation Dice collapses or never learns (``analysis/health.py``).
    The same race still decides a seed at 1 patient on some CPUs at this learning rate (2026-12-07, an AMD EPYC: ACTION
    seed 3 in ``label_fractions.py``, ACTION w/o L_anco seed 3 in the default study): seed 3's val Dice is 0.0 from its
    first validation and ends at test 20.2, while its supervised Dice loss falls to 0.03 (it fits the labelled patient
    and predicts background on the others); without L_unsup it scores 54.6, with half of it 54.6, with the full
    supervised weight 58.7 (750 steps, ``benchmarks/RESULTS.md``, "label_fractions at quick"). The rows keep the
    released weights; the table's trial health marks such a seed.
* ``paper``  -- a GPU cluster: ACDC (``--data-root``) at 256x256, the released UNet and 30 000 steps
  (docs/shared.md, 'UNet backbone' and 'Optimiser and schedule'), 3 seeds.

The table rows' configurations at a profile's sizes are :mod:`medseg_platform.recipes`'s, the study scripts' flags
:mod:`medseg_platform.study_flags`'s and the ``--protocol`` overrides :mod:`medseg_platform.protocol`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from medseg_platform.config import DataConfig, EvalConfig, ModelConfig, OptimConfig, TrialConfig
from medseg_platform.overrides import STUDY_FLAG_KEYS, check_key, config_fields, parse_value


@dataclass(frozen=True)
class MethodSizes:
    """The numbers the contrastive methods scale with (docs/overview.md, 'Ablation axes and released values');
    ``paper`` = the released values."""

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
    """A problem size: the base trial config, the label fractions (table columns), seeds, dataset and method sizes."""

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


def with_steps(profile: Profile, steps: int) -> Profile:
    """``profile`` with ``steps`` fine-tuning steps (the schedules :func:`medseg_platform.recipes.method_overrides`
    derives follow)."""
    return replace(profile, trial=profile.trial.replace(**{"optim.max_steps": int(steps)}))


def profile_with_overrides(profile: Profile, sets: dict[str, str], flags: dict[str, str] = STUDY_FLAG_KEYS) -> Profile:
    """``profile`` with the ``--set`` overrides of its config's sections (``optim.max_steps``, ``data.patch_size``, ...;
    not the objective's), so that what :func:`medseg_platform.recipes.method_overrides` derives from them follows: the schedules from the
    step count (mean teacher's ramp-up), the ISD stages' image and window sizes from the patch."""
    values = {}
    for key, text in sets.items():
        if key != "objective" and not key.startswith("objective_params."):
            check_key(key, flags)
            values[key] = parse_value(key, text, config_fields()[key])
    return replace(profile, trial=profile.trial.replace(**values)) if values else profile
