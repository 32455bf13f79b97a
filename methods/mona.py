"""``mona``: MONA fine-tuning, the pipeline that ARCO shares (docs/mona.md; ARCO's samplers: docs/arco.md).

Papers: MONA = You et al., "Mine yOur owN Anatomy: Revisiting Medical Image Segmentation with Extremely
Limited Labels", TPAMI 2024; ARCO = You et al., "Rethinking Semi-Supervised Medical Image Segmentation: A
Variance-Reduction Perspective", NeurIPS 2023. The released MONA repository *is* the ARCO repository
(docs/mona.md, 'MONA and ARCO share one code base'): MONA fine-tuning is ARCO with the uniform sampler
("ARCO-NS"). :class:`MonaObjective` implements both; ``"mona"`` defaults to ``sampler="uniform"``, ``"arco"``
(:mod:`methods.arco`) to ``sampler="stratified"`` (ARCO-SG, ``--func smc``; ``"stratified_antithetic"`` =
ARCO-SAG, ``asmc``). The U2PL contrast ``L_contrast`` is in :mod:`methods.u2pl`.

Modules (docs/mona.md, 'Modules'): the student UNet (the model passed in), its EMA teacher, the linear residual
feature extractor ``FE_s`` (trained) and its EMA copy ``FE_t``, the student predictor ``Pred``; the student
representation is ``r = Pred(FE_s(pyramid))``, the teacher's ``r^t = FE_t(pyramid^t)`` (full resolution,
``sum(pyramid_channels)`` = 496 channels as released); per-class FIFO memory banks of negative keys; the
nearest-neighbour pool ``Π`` (K = 36 rows).

One step (docs/mona.md, 'One fine-tuning step')::

    1. teacher (no grad) on the weak x_u -> confidence q, pseudo-label ŷ
    2. x_l^c = 8-bit re-quantised x_l (confidence 1), used only by L_eqv
    3. mix(x_u, ŷ, q) once -> ŷ', q'; perturb twice -> x_u^{s1} (main), x_u^{s2} (L_eqv)
    4. FE_t <- m FE_t + (1 - m) FE_s
    5. student z_l = f_s(x_l), z_u = f_s(x_u^{s1}); teacher z_l^t = f_t(x_l), z_u^t = f_t(x_u^{s1})
       (separate passes, as released: BatchNorm statistics per pass)
    6. r = Pred(FE_s(.)), r^t = FE_t(.) for the 8 images [l; u] (read where the losses need them, below)
    7. L = sup_weight L_sup + k1 L_contrast + k3 L_unsup + k2 L_eqv + k4 L_nn
       (k1 = contrast_weight 0.01, k2 = eqv_weight 1, k3 = unsup_weight 1, k4 = nn_weight 1; as released L_nn
       has no gradient and is logged, not added, see "Work skipped" below; with the engine it runs after backward)
    8. enqueue the normalised, flattened r_u^t rows into Π (FIFO)
    9. (engine) SGD step; after_optimizer_step: EMA of the teacher UNet

    The steps give the data flow, not the order of the random draws: x_u^{s2} is drawn where L_eqv needs it, after
    steps 5-8 (docs/mona.md, 'One fine-tuning step').

Loss terms:

* ``L_sup`` = CE + batch Dice incl. background (docs/shared.md, 'Supervised loss'), weight ``sup_weight``
  (1 as released).
* ``L_unsup`` = :func:`methods.losses.pseudo_label_loss` on ``z_u`` with ``ŷ', q'`` (threshold 0.97;
  docs/shared.md, 'Pseudo-label loss').
* ``L_contrast`` = U2PL's memory-bank loss exactly as released (docs/mona.md, 'U2PL contrast'): see
  :func:`methods.u2pl.u2pl_masks`, :func:`methods.u2pl.contrast_plan`, :func:`methods.u2pl.u2pl_contrast_loss`.
* ``L_eqv`` = TPS equivariance/invariance KL (docs/mona.md, 'Equivariance loss'): :func:`equivariance_loss`,
  warps from :mod:`methods.tps`.
* ``L_nn`` = nearest-neighbour loss against ``Π`` (docs/mona.md, 'Nearest-neighbour loss'): :func:`nn_loss`.

"As released" vs "as described in the paper" (defaults are as released everywhere; docs/mona.md, 'Released
versus described'):

* ``entropy_source``: ``"student"`` (as released; docs/mona.md, 'Entropy masks and the alpha schedule') |
  ``"teacher"`` (U2PL: the teacher's prediction).
* ``u2pl_negative_mask``: ``"as_coded"`` (docs/mona.md, 'Negative mask': the labelled negatives are always
  empty and unlabelled negatives need pseudo-label = c) | ``"paper"`` (U2PL's intent: see
  :func:`methods.u2pl.u2pl_masks`).
* ``valid_class_indexing``: ``"as_coded"`` (docs/mona.md, 'Valid-class indexing': anchors/prototype of the
  j-th class *index*, bank of the j-th *valid class*) | ``"fixed"`` (everything of the j-th valid class).
* ``bank_init``: ``"zero"`` (as released: each bank starts with one all-zero key) | ``"empty"``.
* ``nn_loss_grad``: ``"as_coded_none"`` (docs/mona.md, 'Nearest-neighbour loss': L_nn carries no gradient
  and is only logged) |
  ``"student_pull"`` (the papers' "maximise the similarity to the K nearest bank entries": a gradient).
* ``sampler_grouping``: ``"flat"`` (as released: strata over the flattened candidate list) | ``"spatial"``
  (the ARCO paper: strata are image cells). Spatial grouping applies to the anchor draws, whose candidates
  have pixel coordinates; bank negatives have none (FIFO order), so their draws always use flat grouping.

Ablations (ARCO paper Tables 2/3: without L_contrast "tailness", without L_unsup, without L_nn "diversity",
and without L_eqv): **a weight of 0 removes the term**: it is not computed (no teacher/representation passes,
no TPS pass, no banks or pool are allocated when nothing needs them) and it disappears from the logged terms.
There are no separate ``use_*`` switches.

Representations (``docs/methods.md`` "Sparse representations"). With ``representation="sparse"`` (the
default) ``r`` and ``r^t`` are never materialised: :class:`methods.pixel_reps.SparseMonaReps` evaluates them
from the decoder pyramid at the anchors and the enqueued negatives, as class prototypes and as pooled NN
rows; the numbers are those of the full maps up to float rounding (``representation="dense"``, the
reference, builds the maps as released: 8 x 496 x 256 x 256 floats ≈ 1 GB each for ``r`` and ``r^t``).

Work skipped (``docs/methods.md`` "Work skipped when it cannot change training"). As released
(``nn_loss_grad="as_coded_none"``) L_nn has no gradient: it is computed only at the steps the engine logs
(:meth:`methods.objective.Objective.is_logged_step`), kept out of ``total`` and logged unweighted as ``nn``;
the NN pool receives the teacher rows only at the ``ceil(K / B_u)`` steps before a logged step (the rows
those steps read), otherwise its ring pointer just advances. The pool's random rows are still drawn (at
construction for a pooled pool, at the first step for a full-resolution one) and the teacher pass still runs
every step, so no RNG draw is skipped. Where the caller calls
:meth:`~methods.objective.Objective.after_backward` (``defer_logged_terms``: the engine), a logged step's L_nn
and its pool write happen there, after the step's activations are freed (``docs/methods.md``, 'L_nn after the
backward pass').

Cost. Every contrasted class draws 256 x 512 negatives from its bank (≈ 260 MB gathered), and
the NN pool holds K = 36 rows of 496 x 256 x 256 floats ≈ 4.7 GB (allocated on the first step, once the
image size is known; each initial row from its own seed, :func:`methods.nn_pool.random_row`). On the sparse
path that pool is stored compactly, each row as its teacher pyramid and the ``FE_t`` weights of its step
(:class:`methods.nn_pool.CompactNNPool`, about 0.4 GB at 256 x 256), and rebuilt one row at a time where
L_nn reads it (``docs/methods.md``, 'A compact full-resolution NN pool'). ``nn_pool_resolution`` (an int g)
average-pools the representation to g x g before it is flattened for L_nn and stored, e.g. g = 32 ->
36 x 496 x 1024 floats ≈ 73 MB; the default ``"full"`` is as released. The memory banks live on the model's
device (the release keeps them on the CPU and copies them every step).

Host syncs per step: one (the per-class mask counts of the contrast, needed for the data-dependent
anchor/bank sizes, read with a single ``tolist``), plus one when a sparse read deduplicates a long point list,
plus, at a step that reads a compact pool, one for its row seeds (and one for the neighbour set with
``"student_pull"``). The NN pool is a ring buffer with wrap-around writes, so
any unlabelled batch size ``B_u <= K`` works (the release needs ``K mod B_u = 0``; the two agree then).
Randomness (samplers, TPS, a pooled pool's rows, a full-resolution pool's base seed) comes from torch's global
RNG on the step's device.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from methods.contrast import alpha_schedule, entropy_percentile_masks
from methods.ema import BN_MODES, EMATeacher
from methods.errors import ConfigError, DataError
from methods.heads import LinearPredictor, MonaFeatureExtractor
from methods.heap import release_free_heap
from methods.intensity import round_trip_8bit
from methods.losses import pseudo_label_loss, supervised_loss
from methods.memory_bank import INITS as BANK_INITS
from methods.memory_bank import ClassMemoryBank
from methods.nn_pool import CompactNNPool, compact_nn_loss, draw_base_seed, random_rows
from methods.objective import (Batch, LossOutput, Objective, check_annotated_kinds, check_choice, check_number, detached,
                               logits_of)
from methods.pixel_reps import REPRESENTATIONS, DenseReps, SparseMonaReps
from methods.samplers import ALLOCATIONS, GROUPINGS, RELEASED_MIN_BLOCK_SIDE, SAMPLERS, SamplerConfig, check_strata_used
from methods.tps import TPSConfig, apply_warp, sample_tps_grid
from methods.u2pl import NEGATIVE_MASKS, VALID_CLASS_INDEXINGS, u2pl_contrast_loss

ENTROPY_SOURCES = ("student", "teacher")
NN_LOSS_GRADS = ("as_coded_none", "student_pull")
EQV_EPS = 1e-7
RELEASED_NEGATIVE_RANK_LOW = 3  # U2PL's low_rank, chosen for ACDC's 4 classes (check_negative_ranks)


class UnreachableNegativesWarning(UserWarning):
    """:class:`MonaObjective` built with the released negative rank window on fewer than 4 classes
    (:func:`unreachable_negative_window`); a study has said so before its trials start, so its engine ignores it."""


@dataclass(frozen=True)
class MonaConfig:
    """MONA/ARCO fine-tuning settings (defaults = the released code, docs/mona.md, 'Defaults'); validated here.

    Loss weights (a weight of 0 removes the term entirely, see the module docstring):

    * ``sup_weight`` (> 0): ``w`` of ``w (CE + Dice)`` (1.0).
    * ``contrast_weight`` (>= 0): k1, U2PL memory-bank contrast (0.01).
    * ``eqv_weight`` (>= 0): k2, TPS equivariance KL (1.0; not in the ARCO paper's loss, in its code).
    * ``unsup_weight`` (>= 0): k3, pseudo-label loss (1.0).
    * ``nn_weight`` (>= 0): k4, nearest-neighbour loss (1.0; no gradient as released, see ``nn_loss_grad``).

    Teachers:

    * ``ema_momentum`` in [0, 1): teacher UNet EMA after every step (0.99).
    * ``fe_ema_momentum`` in [0, 1): ``FE_t`` EMA of ``FE_s`` at the start of every step (0.99).
    * ``teacher_bn_mode``: ``"train"`` (as released: batch statistics, dropout on) or ``"eval"``
      (running statistics copied from the student at every EMA update).
    * ``copy_bn_update``: True (as released: the student also runs on the labelled copy ``x_l^c``, between its
      passes on ``x_l`` and ``x_u^{s1}``, in train mode; the release discards the output, but the pass moves the
      student's BatchNorm running statistics, which validation and test read, and draws dropout masks; here it
      runs without gradient) or False (no such pass). docs/mona.md, 'One fine-tuning step', step 5.

    Pseudo-labels: ``unsup_threshold`` in [0, 1], ReCo's confidence threshold of ``L_unsup`` (0.97).

    U2PL contrast (docs/mona.md, 'U2PL contrast'):

    * ``temperature`` (> 0): τ of the InfoNCE (0.5; the released ``--temp`` is ignored).
    * ``num_anchors`` (int >= 1): anchors per class (256). ``num_negatives`` (int >= 1): per anchor (512).
    * ``anchor_threshold`` in [0, 1]: δ_p, anchors need teacher ``P_c > δ_p`` (0.3).
    * ``negative_threshold`` in [0, 1]: δ_n, negatives need teacher ``P_c < δ_n`` (0.97).
    * ``negative_rank_low``, ``negative_rank_high`` (ints, 1 <= low < high): unlabelled negatives need the
      rank of c in the teacher's sorted probabilities in ``[low, high)``; labelled (paper mode) need c in
      the teacher's top ``low`` ((3, 20)).
    * ``alpha0`` in [0, 100]: the entropy percentile at step 0 (20); ``α_t = α0 (1 - e/E)``.
    * ``steps_per_epoch`` (int >= 0): the epoch length of the α_t schedule. As released an epoch is
      ``floor(N_u / B_u)`` steps (unlabelled slices / unlabelled batch). 0 = the epoch of the trial's own split
      (its unlabelled slices, those its labelled subset leaves), as released: the platform's engine fills it in
      before building the objective (``loss`` raises a :class:`ConfigError` while it is 0). Default 322 = ACDC with 1 labelled patient (23 labelled, 1289
      unlabelled slices, 4 per batch; docs/data.md, 'Batches and epochs').
    * ``entropy_source``: ``"student"`` (as released) | ``"teacher"`` (U2PL).
    * ``u2pl_negative_mask``: ``"as_coded"`` | ``"paper"`` (see :func:`methods.u2pl.u2pl_masks`).
    * ``valid_class_indexing``: ``"as_coded"`` | ``"fixed"`` (see :func:`methods.u2pl.contrast_plan`).
    * ``bank_capacity_background``, ``bank_capacity_foreground`` (ints >= 1): FIFO capacities (50 000, 30 000).
    * ``bank_init``: ``"zero"`` (as released) | ``"empty"``.

    Sampler (ARCO; docs/arco.md, 'Sampler interface'), used for the anchor and the negative draws:

    * ``sampler``: one of ``SAMPLERS`` (``"uniform"`` = MONA; ARCO's default is ``"stratified"``). The four settings
      below shape the stratified samplers' strata: with ``"uniform"`` they stay at their defaults (a ConfigError).
    * ``sampler_groups`` (perfect square): strata (16 as released; the paper tries 9/16/25).
    * ``sampler_grouping``: ``"flat"`` (as released) | ``"spatial"`` (paper; anchors only, negatives flat).
    * ``sampler_allocation``: rounding of the spatial proportional allocation (``"systematic"``, exactly
      unbiased, or ``"largest_remainder"``); only used by ``sampler_grouping="spatial"``.
    * ``sampler_min_block_side`` (int >= 1): the flat grid is used only when its blocks have side >= this
      (docs/arco.md, 'Fallback for small pools'). Released 2: a block of one cell makes the released sampler
      raise and fall back to the 1-D sampler, so pools of 16-56 candidates (16 groups) are sampled in 1-D strata and
      pools of 13-15 uniformly (the 1-D sampler reverts below 16); 1 = the
      grid whenever it exists (the platform before issue 13).

    Nearest-neighbour loss (docs/mona.md, 'Nearest-neighbour loss'):

    * ``nn_pool_capacity`` (int >= 1): K rows of Π (36); must be >= the unlabelled batch.
    * ``nn_topk`` (int in [1, K]): neighbours (5).
    * ``nn_loss_grad``: ``"as_coded_none"`` | ``"student_pull"``.
    * ``nn_pool_resolution``: ``"full"`` (as released, ≈ 4.7 GB at 256 x 256) or an int g >= 1: average-pool
      the representation to g x g before flattening (memory K x D x g^2 floats).

    Representations (the same numbers either way, see :mod:`methods.pixel_reps`):

    * ``representation``: ``"sparse"`` (default: ``r`` and ``r^t`` are evaluated from the decoder pyramid only
      at the pixels, class means and pooled cells the losses read; no (N, D, H, W) map is built except the
      full-resolution NN rows at the steps that need them) | ``"dense"`` (the reference: full maps, as
      released).

    Equivariance loss (docs/mona.md, 'Equivariance loss'):

    * ``eqv_conf_threshold`` in [0, 1]: pixels need confidence >= this (``--weak_threshold`` 0.7).
    * ``tps_sigma``, ``tps_rotation_deg``, ``tps_scale_min``, ``tps_scale_max``, ``tps_translation``,
      ``tps_mirror_p``: the random warp (:class:`methods.tps.TPSConfig`; 0.01, 60, 0.8, 1.2, 0.1, 0.5).
    """

    sup_weight: float = 1.0
    contrast_weight: float = 0.01
    eqv_weight: float = 1.0
    unsup_weight: float = 1.0
    nn_weight: float = 1.0

    ema_momentum: float = 0.99
    fe_ema_momentum: float = 0.99
    teacher_bn_mode: str = "train"
    copy_bn_update: bool = True

    unsup_threshold: float = 0.97

    temperature: float = 0.5
    num_anchors: int = 256
    num_negatives: int = 512
    anchor_threshold: float = 0.3
    negative_threshold: float = 0.97
    negative_rank_low: int = RELEASED_NEGATIVE_RANK_LOW
    negative_rank_high: int = 20
    alpha0: float = 20.0
    steps_per_epoch: int = 322
    entropy_source: str = "student"
    u2pl_negative_mask: str = "as_coded"
    valid_class_indexing: str = "as_coded"
    bank_capacity_background: int = 50_000
    bank_capacity_foreground: int = 30_000
    bank_init: str = "zero"

    sampler: str = "uniform"
    sampler_groups: int = 16
    sampler_grouping: str = "flat"
    sampler_allocation: str = "systematic"
    sampler_min_block_side: int = RELEASED_MIN_BLOCK_SIDE

    nn_pool_capacity: int = 36
    nn_topk: int = 5
    nn_loss_grad: str = "as_coded_none"
    nn_pool_resolution: Any = "full"

    representation: str = "sparse"

    eqv_conf_threshold: float = 0.7
    tps_sigma: float = 0.01
    tps_rotation_deg: float = 60.0
    tps_scale_min: float = 0.8
    tps_scale_max: float = 1.2
    tps_translation: float = 0.1
    tps_mirror_p: float = 0.5

    def __post_init__(self) -> None:
        check_number(self, "sup_weight", minimum=0.0, min_inclusive=False)
        for field in ("contrast_weight", "eqv_weight", "unsup_weight", "nn_weight"):
            check_number(self, field, minimum=0.0)
        check_number(self, "ema_momentum", minimum=0.0, maximum=1.0, max_inclusive=False)
        check_number(self, "fe_ema_momentum", minimum=0.0, maximum=1.0, max_inclusive=False)
        check_choice(self, "teacher_bn_mode", BN_MODES)
        check_annotated_kinds(type(self), {"copy_bn_update": self.copy_bn_update})  # also when built without config_from_dict
        for field in ("unsup_threshold", "anchor_threshold", "negative_threshold", "eqv_conf_threshold"):
            check_number(self, field, minimum=0.0, maximum=1.0)
        check_number(self, "temperature", minimum=0.0, min_inclusive=False)
        check_number(self, "num_anchors", minimum=1, integer=True)
        check_number(self, "num_negatives", minimum=1, integer=True)
        check_number(self, "negative_rank_low", minimum=1, integer=True)
        check_number(self, "negative_rank_high", minimum=2, integer=True)
        if self.negative_rank_high <= self.negative_rank_low:
            raise ConfigError(
                f"{type(self).__name__}.negative_rank_high: must be > {type(self).__name__}.negative_rank_low, got "
                f"[{self.negative_rank_low}, {self.negative_rank_high}) (raise negative_rank_high, default 20)"
            )
        check_number(self, "alpha0", minimum=0.0, maximum=100.0)
        check_number(self, "steps_per_epoch", minimum=0, integer=True)
        check_choice(self, "entropy_source", ENTROPY_SOURCES)
        check_choice(self, "u2pl_negative_mask", NEGATIVE_MASKS)
        check_choice(self, "valid_class_indexing", VALID_CLASS_INDEXINGS)
        check_number(self, "bank_capacity_background", minimum=1, integer=True)
        check_number(self, "bank_capacity_foreground", minimum=1, integer=True)
        check_choice(self, "bank_init", BANK_INITS)
        check_choice(self, "sampler", SAMPLERS)
        check_number(self, "sampler_groups", minimum=1, integer=True)
        if math.isqrt(self.sampler_groups) ** 2 != self.sampler_groups:
            raise ConfigError(f"{type(self).__name__}.sampler_groups: must be a perfect square, got {self.sampler_groups} (use 9, 16 or 25)")
        check_choice(self, "sampler_grouping", GROUPINGS)
        check_choice(self, "sampler_allocation", ALLOCATIONS)
        check_number(self, "sampler_min_block_side", minimum=1, integer=True)
        check_strata_used(self)
        check_number(self, "nn_pool_capacity", minimum=1, integer=True)
        check_number(self, "nn_topk", minimum=1, maximum=self.nn_pool_capacity, integer=True)
        check_choice(self, "nn_loss_grad", NN_LOSS_GRADS)
        if self.nn_pool_resolution != "full":
            check_number(self, "nn_pool_resolution", minimum=1, integer=True)
        check_choice(self, "representation", REPRESENTATIONS)
        check_number(self, "tps_sigma", minimum=0.0)
        check_number(self, "tps_rotation_deg", minimum=0.0, maximum=180.0)
        check_number(self, "tps_scale_min", minimum=0.0, min_inclusive=False)
        check_number(self, "tps_scale_max", minimum=0.0, min_inclusive=False)
        if self.tps_scale_min > self.tps_scale_max:
            raise ConfigError(
                f"{type(self).__name__}.tps_scale_min: must be <= {type(self).__name__}.tps_scale_max, got {self.tps_scale_min} > "
                f"{self.tps_scale_max} (swap or widen the scale range)"
            )
        check_number(self, "tps_translation", minimum=0.0)
        check_number(self, "tps_mirror_p", minimum=0.0, maximum=1.0)

    @property
    def tps(self) -> TPSConfig:
        return TPSConfig(
            sigma=self.tps_sigma, rotation_deg=self.tps_rotation_deg, scale_min=self.tps_scale_min,
            scale_max=self.tps_scale_max, translation=self.tps_translation, mirror_p=self.tps_mirror_p,
        )

    @property
    def sampler_config(self) -> SamplerConfig:
        return SamplerConfig(
            self.sampler, self.sampler_groups, self.sampler_grouping, self.sampler_allocation, self.sampler_min_block_side
        )


# -- L_eqv and L_nn (docs/mona.md, 'Equivariance loss' and 'Nearest-neighbour loss') ---------------------------

def equivariance_loss(student_logits: torch.Tensor, target_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MONA's masked KL between the warped target and the student on the warped input (docs/mona.md,
    'Equivariance loss').

    ``ℓ(p) = Σ_c softmax(Z)_c [log softmax(Z)_c - log_softmax(z^e)_c]``,
    ``L = mean_b Σ_p m_b(p) ℓ_b(p) / (Σ_p m_b(p) + 1e-7)``.

    Args:
        student_logits: float (B, C, H, W) ``z^e = f_s(T(x))`` (gradient flows here).
        target_logits: float (B, C, H, W) ``Z = T(sg(z))`` (detached here).
        mask: float (B, H, W) ``m = T(1[label > 0] 1[conf >= 0.7])`` (values in [0, 1] after bilinear warping).
    """
    target = target_logits.detach()
    log_target = F.log_softmax(target, dim=1)
    kl = (log_target.exp() * (log_target - F.log_softmax(student_logits, dim=1))).sum(1)
    mask = mask.to(kl.dtype)
    per_image = (mask * kl).flatten(1).sum(1) / (mask.flatten(1).sum(1) + EQV_EPS)
    return per_image.mean()


def nn_loss(student: torch.Tensor, teacher: torch.Tensor, pool: torch.Tensor, topk: int, grad: str = "as_coded_none") -> torch.Tensor:
    """MONA's nearest-neighbour loss against the pool Π (docs/mona.md, 'Nearest-neighbour loss').

    Args:
        student: float (B, F) L2-normalised student rows ``u_b``; teacher: float (B, F) ``v_b``; pool: (K, F).
        topk: number of neighbours (5). grad: ``"as_coded_none"`` | ``"student_pull"``.

    Distances ``d^s = 2 - 2 u Π^T``, ``d^t = 2 - 2 v Π^T``.

    * ``"as_coded_none"`` (as released): ``L = mean_b (1/k) Σ_{k ∈ NN_k(d^s_b)} d^t_{bk}`` — neighbours chosen by
      the student, distances of the teacher: no gradient (``requires_grad`` is False; it is only logged).
    * ``"student_pull"`` (the papers' intent): neighbours chosen by ``d^t``,
      ``L = mean_b (1/k) Σ_k (2 - 2 u_b·Π_k)``: pulls the student towards its teacher's nearest pool entries.
    """
    if grad == "as_coded_none":
        with torch.no_grad():
            index = (2 - 2 * student @ pool.T).topk(topk, dim=1, largest=False).indices
            return torch.gather(2 - 2 * teacher @ pool.T, 1, index).mean()
    if grad == "student_pull":
        with torch.no_grad():
            index = (2 - 2 * teacher @ pool.T).topk(topk, dim=1, largest=False).indices
        neighbours = pool[index]                                              # (B, k, F)
        return (2 - 2 * torch.einsum("bf,bkf->bk", student, neighbours)).mean()
    raise ConfigError(f"nn_loss: grad {grad!r} is not a choice (use one of {list(NN_LOSS_GRADS)})")


def unreachable_negative_window(config: MonaConfig, num_classes: int) -> str:
    """Why ``config``'s U2PL contrast can never take a negative on ``num_classes`` classes, or "" (docs/mona.md,
    'Negative mask'): a class's rank in the teacher's probabilities runs 0 .. C - 1, so with ``negative_rank_low >= C``
    no unlabelled pixel is a negative, and with ``u2pl_negative_mask="as_coded"`` no labelled pixel is one either. The
    banks then never take a key and L_contrast has no negative but their initial zero key: a contrast in name only (the
    released window [3, 20) on a 2- or 3-class dataset; the MONA docs review)."""
    low, classes = config.negative_rank_low, int(num_classes)
    if config.contrast_weight == 0 or config.u2pl_negative_mask != "as_coded" or low < classes:
        return ""
    return (f"negative_rank_low {low} with {classes} classes: a class ranks at most {classes - 1} in the teacher's "
            f"probabilities, so no unlabelled pixel can be a negative, and u2pl_negative_mask 'as_coded' takes none from "
            f"the labelled pixels: the memory banks never take a key, so L_contrast has no negative but a bank's "
            f"initial zero key (docs/mona.md, 'Negative mask'); set negative_rank_low below {classes} (e.g. {classes - 1}), "
            f"or u2pl_negative_mask 'paper'")


def check_negative_ranks(config: MonaConfig, num_classes: int, where: str = "") -> None:
    """A :class:`ConfigError` (named ``where``, default the config class) when ``config`` sets a negative rank window
    that no class reaches on ``num_classes`` classes (:func:`unreachable_negative_window`). The released window on
    fewer than 4 classes is what the released code trains, so it passes here; a study warns about it
    (``medseg_platform.study.runner.warn_unreachable_negatives``) and :class:`MonaObjective` with a warning."""
    problem = unreachable_negative_window(config, num_classes)
    if problem and config.negative_rank_low != RELEASED_NEGATIVE_RANK_LOW:
        raise ConfigError(f"{where or type(config).__name__}.{problem}")


# -- the objective -----------------------------------------------------------------------------------------------

class MonaObjective(Objective):
    """MONA fine-tuning = ARCO with the uniform sampler (module docstring; docs/mona.md, 'MONA and ARCO share
    one code base').

    Submodules: ``student``, ``teacher`` (:class:`EMATeacher` of the UNet), ``fe_student`` (FE_s),
    ``fe_teacher`` (:class:`EMATeacher` of FE_s), ``predictor`` (Pred) — the heads exist only when
    ``contrast_weight > 0`` or ``nn_weight > 0``; ``banks`` (:class:`ClassMemoryBank`, only with
    ``contrast_weight > 0``); buffers ``nn_pool`` (K, F) and ``nn_pool_pointer`` (only with ``nn_weight > 0``;
    with ``nn_pool_resolution="full"`` the pool is allocated at the first step, F = D H W, and on the sparse
    path it is the submodule ``nn_pool_compact``, a :class:`methods.nn_pool.CompactNNPool`, instead of
    ``nn_pool``; :meth:`pool_rows` gives the (K, F) rows of either).
    ``state_dict`` covers all of them. ``eval_model()`` is the student UNet.

    The model must expose ``num_classes`` and ``pyramid_channels`` (as :class:`methods.unet.UNet`) and return
    ``UNetOutput``-like outputs (``.logits``, ``.pyramid``).

    Logged terms (present only when their weight is > 0): ``sup`` (weighted), ``ce``, ``dice``, ``unsup``,
    ``contrast`` and ``alpha`` (α_t of this step), ``eqv``, ``nn`` — all unweighted except ``sup``.
    """

    name = "mona"
    config_class = MonaConfig
    requires_unlabelled = True
    requires_strong_augment = True
    mixes_strong_views = True

    def __init__(self, model: nn.Module, config: MonaConfig | None = None) -> None:
        super().__init__(model, config)
        cfg = self.config
        channels = getattr(model, "pyramid_channels", None)
        num_classes = getattr(model, "num_classes", None)
        if channels is None or not isinstance(num_classes, int):
            raise ConfigError(
                f"{type(self).__name__}: the model lacks `pyramid_channels` or `num_classes` (use a decoder-pyramid "
                f"model such as methods.unet.UNet, model.name 'unet')"
            )
        check_negative_ranks(cfg, num_classes)
        if problem := unreachable_negative_window(cfg, num_classes):  # the released window on fewer than 4 classes
            warnings.warn(f"{type(cfg).__name__}.{problem}", UnreachableNegativesWarning, stacklevel=2)
        self.num_classes = num_classes
        self.rep_dim = int(sum(channels))
        self.teacher = EMATeacher(model, momentum=cfg.ema_momentum, copy_buffers=cfg.teacher_bn_mode == "eval")
        self.fe_student = self.fe_teacher = self.predictor = self.banks = None
        if cfg.contrast_weight > 0 or cfg.nn_weight > 0:
            self.fe_student = MonaFeatureExtractor(tuple(channels))
            self.predictor = LinearPredictor(self.rep_dim)
            self.fe_teacher = EMATeacher(self.fe_student, momentum=cfg.fe_ema_momentum)
        if cfg.contrast_weight > 0:
            capacities = (cfg.bank_capacity_background,) + (cfg.bank_capacity_foreground,) * (num_classes - 1)
            self.banks = ClassMemoryBank(num_classes, self.rep_dim, capacities, init=cfg.bank_init)
        self._pool_pointer = 0
        self._deferred_nn: tuple | None = None  # a logged step's L_nn inputs, for after_backward
        self.nn_pool_compact = None
        if cfg.nn_weight > 0:
            if cfg.nn_pool_resolution == "full" and cfg.representation == "sparse":
                # rows stored as (teacher pyramid, FE_t weights): methods/nn_pool.py; allocated at the first step
                self.nn_pool_compact = CompactNNPool(cfg.nn_pool_capacity, len(channels))
            else:
                if cfg.nn_pool_resolution == "full":
                    pool = torch.empty(0, 0)  # allocated at the first step, when H x W is known
                else:
                    pool = self._random_pool(self.rep_dim * cfg.nn_pool_resolution ** 2, torch.device("cpu"), torch.float32)
                self.register_buffer("nn_pool", pool)
            self.register_buffer("nn_pool_pointer", torch.zeros((), dtype=torch.int64))
        self.tps_config = cfg.tps

    # -- NN pool ---------------------------------------------------------------------------------------------

    def _random_pool(self, features: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """K rows of N(0, 1) from the global RNG, each L2-normalised (as released; pooled rows only: a
        full-resolution pool draws each row from its own seed, :func:`methods.nn_pool.random_row`)."""
        return F.normalize(torch.randn(self.config.nn_pool_capacity, features, device=device, dtype=dtype), dim=1)

    def _rows_for_pool(self, source: Any) -> torch.Tensor:
        """A row source of B images (:mod:`methods.pixel_reps`) -> L2-normalised (B, F) rows: the (B, D, H, W)
        map flattened ("full"), or average-pooled to g x g first (from the pyramid on the sparse path)."""
        g = self.config.nn_pool_resolution
        if g != "full":
            return F.normalize(source.pooled(g).flatten(1), dim=1)
        # one image at a time into one (B, F) block: at 256 x 256 a map is 130 MB and FE's temporaries several
        # times that (rows with a gradient, "student_pull", are joined by autograd-tracked concatenation)
        parts = (F.normalize(source.dense(slice(b, b + 1)).flatten(1), dim=1) for b in range(source.num_images))
        if torch.is_grad_enabled():
            return torch.cat(list(parts))
        first = next(parts)
        rows = first.new_empty(source.num_images, first.shape[1])
        rows[0] = first[0]
        for b, part in enumerate(parts, start=1):
            rows[b] = part[0]
        return rows

    def _pool_rows_needed(self, step: int, max_steps: int, batch: int) -> bool:
        """Whether the rows enqueued at ``step`` can still be in the pool at a later step that computes L_nn.

        A row written at step s is overwritten once K more rows have been written, so with B rows per step it
        can be read at steps s+1 .. s+ceil(K/B) only. With ``"as_coded_none"`` L_nn is computed at logged steps
        only (it has no gradient), so the other steps skip the rows' computation and advance the pointer: at
        every step that reads the pool it holds exactly the rows the dense, every-step computation holds."""
        if self.config.nn_loss_grad == "student_pull":
            return True
        reach = -(-self.config.nn_pool_capacity // batch)
        return any(self.is_logged_step(t, max_steps) for t in range(step + 1, min(step + reach, max_steps - 1) + 1))

    def _pool_cells(self, image: torch.Tensor) -> int:
        """Pixels per pool row: H x W of the images ("full") or g x g."""
        g = self.config.nn_pool_resolution
        return image.shape[2] * image.shape[3] if g == "full" else g * g

    def _ensure_pool(self, like: torch.Tensor, pyramid: list[torch.Tensor]) -> None:
        """Allocate a full-resolution pool at the first step (its random rows from one base seed drawn from the
        global RNG, dense and compact alike) and check that later steps give images of the same size."""
        where = type(self).__name__
        if self.nn_pool_compact is not None:
            if not self.nn_pool_compact.initialised:
                self.nn_pool_compact.initialise(draw_base_seed(like.device), pyramid, self.fe_teacher.module, like.dtype)
            self.nn_pool_compact.check_pyramid(pyramid, where)
            return
        features = self.rep_dim * self._pool_cells(like)
        if self.nn_pool.numel() == 0:
            self.nn_pool = random_rows(draw_base_seed(like.device), self.config.nn_pool_capacity, features, like.device, like.dtype)
        elif self.nn_pool.shape[1] != features:
            raise DataError(
                f"{type(self).__name__}: the NN pool holds {self.nn_pool.shape[1]}-dim rows but this step gives "
                f"{features} (the image size changed: give all images one size or set nn_pool_resolution to an int)"
            )

    @torch.no_grad()
    def _enqueue_pool(self, rows: torch.Tensor | None, pyramid: list[torch.Tensor] | None, count: int) -> None:
        """Write the step's ``count`` rows at the ring pointer: ``rows`` (count, F) into the dense pool, or the
        teacher ``pyramid`` (with FE_t's current weights) into the compact one; ``None`` only advances the
        pointer (rows that no step will read, see :meth:`_pool_rows_needed`)."""
        capacity = self.config.nn_pool_capacity
        slots = (self._pool_pointer + torch.arange(count, device=self.nn_pool_pointer.device)) % capacity
        if self.nn_pool_compact is not None:
            if pyramid is not None:
                self.nn_pool_compact.write(slots.to(pyramid[0].device), pyramid, self.fe_teacher.module)
        elif rows is not None:
            self.nn_pool.index_copy_(0, slots.to(rows.device), rows.to(self.nn_pool.dtype))
        self._pool_pointer = (self._pool_pointer + count) % capacity
        self.nn_pool_pointer.fill_(self._pool_pointer)

    def _nn_loss(self, student_rows: torch.Tensor, teacher_rows: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if self.nn_pool_compact is not None:
            return compact_nn_loss(student_rows, teacher_rows, self.nn_pool_compact, self.fe_teacher.module, cfg.nn_topk,
                                   cfg.nn_loss_grad)
        return nn_loss(student_rows, teacher_rows, self.nn_pool, cfg.nn_topk, cfg.nn_loss_grad)

    def _rows_to_enqueue(self, teacher_pyramid: list[torch.Tensor], rows_needed: bool) -> torch.Tensor | None:
        """The teacher rows a step writes into a dense pool (None: a compact pool stores the pyramid, or no later
        step reads them)."""
        if not rows_needed or self.nn_pool_compact is not None:
            return None
        with torch.no_grad():
            return self._rows_for_pool(self._teacher_reps([teacher_pyramid]))

    @torch.no_grad()
    def _logged_nn(self, student_pyramid: list[torch.Tensor], teacher_pyramid: list[torch.Tensor], rows_needed: bool) -> torch.Tensor:
        """``"as_coded_none"`` at a logged step: L_nn of the student's and the teacher's rows of the strong view
        (kept out of ``total``: no gradient, it would add a constant; see the module docstring), then the step's
        pool write (step 8, after the loss)."""
        teacher_rows = self._rows_for_pool(self._teacher_reps([teacher_pyramid]))
        student_rows = self._rows_for_pool(self._student_reps([student_pyramid]))
        value = self._nn_loss(student_rows, teacher_rows)
        del student_rows
        self._enqueue_pool(teacher_rows if rows_needed else None, teacher_pyramid if rows_needed else None, teacher_rows.shape[0])
        return value

    def pool_rows(self) -> torch.Tensor:
        """The NN pool as (K, F) rows, whatever its storage (the compact one is rebuilt: 4.7 GB at the paper size)."""
        if self.nn_pool_compact is not None:
            return self.nn_pool_compact.materialise(self.fe_teacher.module, self.rep_dim)
        return self.nn_pool

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        key = prefix + "nn_pool"
        if self.nn_pool_compact is not None and key in state_dict:
            raise ConfigError(
                f"{type(self).__name__}: the checkpoint holds the NN pool as dense rows, this objective stores it compactly "
                f"(a checkpoint written before the compact pool, or with representation='dense'; resume it with "
                f"representation='dense': the same numbers up to float rounding)"
            )
        if self.nn_pool_compact is None and any(name.startswith(prefix + "nn_pool_compact.") for name in state_dict):
            raise ConfigError(
                f"{type(self).__name__}: the checkpoint holds the full-resolution NN pool compactly (representation="
                f"'sparse'), this objective stores dense rows (representation='dense'); resume it with "
                f"representation='sparse': the same numbers up to float rounding"
            )
        stored = state_dict.get(key)
        if stored is not None and stored.numel() and stored.shape[0] != self.config.nn_pool_capacity:
            raise ConfigError(
                f"{type(self).__name__}: the checkpoint holds {stored.shape[0]} NN pool rows but nn_pool_capacity is "
                f"{self.config.nn_pool_capacity} (resume with the configuration the checkpoint was written with)"
            )
        g = self.config.nn_pool_resolution
        if stored is not None and stored.numel() and g != "full" and stored.shape[1] != self.rep_dim * g * g:
            # it was taken for the lazily sized full-resolution pool, and the next step blamed the image size
            raise ConfigError(
                f"{type(self).__name__}: the checkpoint's NN pool rows have {stored.shape[1]} features, but nn_pool_resolution "
                f"{g} gives {self.rep_dim * g * g} ({self.rep_dim} x {g} x {g}); resume with the nn_pool_resolution the "
                f"checkpoint was written with"
            )
        if getattr(self, "nn_pool", None) is not None and key in state_dict and state_dict[key].shape != self.nn_pool.shape:
            self.nn_pool = torch.empty_like(state_dict[key], device=self.nn_pool.device)  # a lazily allocated pool
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if getattr(self, "nn_pool_pointer", None) is not None and prefix + "nn_pool_pointer" in state_dict:
            self._pool_pointer = int(state_dict[prefix + "nn_pool_pointer"])

    # -- one step ----------------------------------------------------------------------------------------------

    def _student_reps(self, pyramids: list[list[torch.Tensor]]) -> Any:
        """``r = Pred(FE_s(.))`` of several pyramids at once (FE and Pred act per pixel: batching is exact), as a
        row source: :class:`methods.pixel_reps.SparseMonaReps` or, with ``representation="dense"``, the
        materialised map in :class:`methods.pixel_reps.DenseReps`."""
        pyramid = [torch.cat(levels, 0) if len(levels) > 1 else levels[0] for levels in zip(*pyramids)]
        if self.config.representation == "sparse":
            return SparseMonaReps(pyramid, self.fe_student, self.predictor)
        return DenseReps(self.predictor(self.fe_student(pyramid)))

    def _teacher_reps(self, pyramids: list[list[torch.Tensor]]) -> Any:
        """``r^t = FE_t(.)`` as a row source (constants: read it under ``torch.no_grad``)."""
        pyramid = [torch.cat(levels, 0) if len(levels) > 1 else levels[0] for levels in zip(*pyramids)]
        if self.config.representation == "sparse":
            return SparseMonaReps(pyramid, self.fe_teacher.module)
        with torch.no_grad():
            return DenseReps(self.fe_teacher.module(pyramid))

    def loss(self, batch: Batch, step: int, max_steps: int) -> LossOutput:
        self.check_batch(batch)
        if self._deferred_nn is not None:
            raise ConfigError(
                f"{type(self).__name__}: the previous logged step's L_nn is still pending: with defer_logged_terms set, "
                f"call after_backward after every backward pass (as the engine's TrainLoop does)"
            )
        cfg = self.config
        x_l, y_l, x_u = batch.labelled_image, batch.label, batch.unlabelled_image
        b_l, b_u = x_l.shape[0], x_u.shape[0]
        use_contrast, use_unsup = cfg.contrast_weight > 0, cfg.unsup_weight > 0
        use_eqv, use_nn = cfg.eqv_weight > 0, cfg.nn_weight > 0
        if cfg.steps_per_epoch == 0:
            raise ConfigError(
                f"{type(cfg).__name__}.steps_per_epoch: 0 (the trial's own epoch) was not resolved by the platform "
                f"(set a number, or run through the engine)"
            )
        if use_nn and b_u > cfg.nn_pool_capacity:
            raise ConfigError(
                f"{type(cfg).__name__}.nn_pool_capacity: {cfg.nn_pool_capacity} is smaller than the unlabelled batch ({b_u}) "
                f"(raise nn_pool_capacity or lower the unlabelled batch size)"
            )

        out_l = self.student(x_l)
        z_l = logits_of(out_l)
        # x_l^c: the labelled images through the released 8-bit round trip (docs/data.md, '8-bit round trip')
        x_lc = round_trip_8bit(x_l) if cfg.copy_bn_update or use_eqv else None
        if cfg.copy_bn_update:  # the release's discarded student pass on x_l^c: BatchNorm statistics and dropout draws
            with torch.no_grad():
                self.student(x_lc)
        sup, parts = supervised_loss(z_l, y_l, cfg.sup_weight)
        total = sup
        terms: dict[str, torch.Tensor] = {"sup": sup, **parts}
        if not (use_contrast or use_unsup or use_eqv or use_nn):
            return LossOutput(total, detached(terms))

        # 1-3: pseudo-labels on the weak view, one mix, two perturbations
        with torch.no_grad():
            probs_weak = torch.softmax(logits_of(self.teacher.predict(x_u, cfg.teacher_bn_mode)), dim=1)
            confidence, pseudo = probs_weak.max(dim=1)
        augment = batch.strong_augment
        mixed = augment.mix(x_u, pseudo, confidence)
        x_s1 = augment.perturb(mixed.image)
        pseudo_mixed, conf_mixed = mixed.pseudo_label, mixed.confidence

        # 4: FE_t EMA at the start of the step
        if self.fe_teacher is not None:
            self.fe_teacher.update(self.fe_student)

        # 5: student on the first strong draw
        out_u = self.student(x_s1)
        z_u = logits_of(out_u)

        if use_unsup:
            unsup = pseudo_label_loss(z_u, pseudo_mixed, conf_mixed, cfg.unsup_threshold)
            total = total + cfg.unsup_weight * unsup
            terms["unsup"] = unsup

        if use_contrast or use_nn:
            # 5-6: teacher passes (separate, as released) and representations (row sources: only what the
            # losses read is computed, see methods.pixel_reps; the teacher pass runs even when only L_nn's
            # skipped rows would need it, so that its dropout draws keep the RNG stream of every step)
            teacher_l = self.teacher.predict(x_l, cfg.teacher_bn_mode) if use_contrast else None
            teacher_u = self.teacher.predict(x_s1, cfg.teacher_bn_mode)

            if use_contrast:
                alpha = alpha_schedule(step, max_steps, cfg.steps_per_epoch, cfg.alpha0)
                with torch.no_grad():
                    entropy_logits = z_u if cfg.entropy_source == "student" else logits_of(teacher_u)
                    # over the pixels whose mixed pseudo-label is kept, as released (all of them unless cutout)
                    low_u, high_u = entropy_percentile_masks(torch.softmax(entropy_logits.detach(), dim=1), alpha,
                                                             valid=pseudo_mixed.ge(0))
                    ones = torch.ones_like(y_l, dtype=torch.bool)
                    low, high = torch.cat([ones, low_u]), torch.cat([ones, high_u])
                    teacher_probs = torch.softmax(torch.cat([logits_of(teacher_l), logits_of(teacher_u)]), dim=1)
                labels = torch.cat([y_l, pseudo_mixed])
                reps = self._student_reps([out_l.pyramid, out_u.pyramid])
                teacher_reps = self._teacher_reps([teacher_l.pyramid, teacher_u.pyramid])
                contrast, _ = u2pl_contrast_loss(reps, teacher_reps, labels, teacher_probs, low, high, b_l, self.banks, cfg)
                total = total + cfg.contrast_weight * contrast
                terms["contrast"] = contrast
                terms["alpha"] = contrast.new_tensor(alpha)

            if use_nn:
                self._ensure_pool(x_u, teacher_u.pyramid)
                logged, rows_needed = self.is_logged_step(step, max_steps), self._pool_rows_needed(step, max_steps, b_u)
                if cfg.nn_loss_grad == "student_pull":
                    with torch.no_grad():
                        teacher_rows = self._rows_for_pool(self._teacher_reps([teacher_u.pyramid]))
                    student_rows = self._rows_for_pool(self._student_reps([out_u.pyramid]))
                    near = self._nn_loss(student_rows, teacher_rows)
                    total = total + cfg.nn_weight * near
                    terms["nn"] = near
                    self._enqueue_pool(teacher_rows, teacher_u.pyramid, b_u)  # 8: after the loss
                elif logged and self.defer_logged_terms:
                    # no gradient (as released): computed in after_backward, when this step's activations are freed
                    self._deferred_nn = ([p.detach() for p in out_u.pyramid], [p.detach() for p in teacher_u.pyramid], rows_needed)
                elif logged:
                    terms["nn"] = self._logged_nn(out_u.pyramid, teacher_u.pyramid, rows_needed)
                else:
                    self._enqueue_pool(self._rows_to_enqueue(teacher_u.pyramid, rows_needed), teacher_u.pyramid if rows_needed else None, b_u)

        if use_eqv:
            x_s2 = augment.perturb(mixed.image)
            grid = sample_tps_grid(b_l + b_u, x_l.shape[2], x_l.shape[3], self.tps_config, device=x_l.device)
            warped_input = apply_warp(torch.cat([x_lc, x_s2]), grid)
            z_e = logits_of(self.student(warped_input))
            target = apply_warp(torch.cat([z_l, z_u]).detach(), grid)
            with torch.no_grad():
                labels_all = torch.cat([y_l, pseudo_mixed])
                conf_all = torch.cat([conf_mixed.new_ones((b_l, *conf_mixed.shape[1:])), conf_mixed])
                keep = (labels_all > 0) & (conf_all >= cfg.eqv_conf_threshold)
                mask = apply_warp(keep.to(z_e.dtype).unsqueeze(1), grid)[:, 0]
            eqv = equivariance_loss(z_e, target, mask)
            total = total + cfg.eqv_weight * eqv
            terms["eqv"] = eqv

        return LossOutput(total, detached(terms))

    def after_backward(self, step: int) -> dict[str, torch.Tensor]:
        """The logged step's gradient-free L_nn and its pool write, left by :meth:`loss` (docs/methods.md, 'L_nn
        after the backward pass'): the weights are still the step's, so the value is the one :meth:`loss` would
        have computed, while the step's activations are freed and, on the CPU, handed back to the OS first
        (:func:`methods.heap.release_free_heap`) so that the full-resolution rows do not come on top of them."""
        if self._deferred_nn is None:
            return {}
        student_pyramid, teacher_pyramid, rows_needed = self._deferred_nn
        self._deferred_nn = None
        if self.config.nn_pool_resolution == "full" and student_pyramid[0].device.type == "cpu":
            release_free_heap()
        return {"nn": self._logged_nn(student_pyramid, teacher_pyramid, rows_needed)}

    def after_optimizer_step(self, step: int) -> None:
        self.teacher.update(self.student)
