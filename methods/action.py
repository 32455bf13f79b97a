"""``action``: ACTION stage iii fine-tuning with anatomical contrast (docs/action.md).

Paper: You et al., "Bootstrapping Semi-supervised Medical Image Segmentation with Anatomical-aware
Contrastive Distillation" (ACTION), IPMI 2023. Its pixel loss ``L_anco`` is ReCo's regional contrast (Liu
et al., "Bootstrapping Semantic Segmentation with Regional Contrast", ICLR 2022). Stages i/ii (ISD
pretraining, docs/isd_pretraining.md, 'Stages') are a separate objective; this one starts from their checkpoint
(build it *after* loading the weights: the teacher is a copy of the student at construction, docs/shared.md,
'EMA teacher'). ACTION++ (docs/action.md, 'ACTION++ (not implemented)') is not implemented here.

Modules: the student UNet (the model passed in), its EMA teacher (:class:`methods.ema.EMATeacher`) and the
representation head ``g`` (:class:`methods.heads.ActionProjectionHead`: all 5 pyramid levels upsampled to
the input size, concatenated, conv3x3 (no bias) -> conv1x1, ``repr_dim`` = 512 channels, not normalised).

One step (docs/action.md, 'One fine-tuning step'; ``C:code/train_2D_action.py:176-251``)::

    1. teacher (no grad, train-mode BN as released) on the weak x_u -> q = max softmax, ŷ = argmax
    2. strong view: strong_view(augment, x_u, ŷ, q) -> x_s, ŷ', q'   (CutMix + jitter/blur/AdvMorph)
    3. student z_l, pyramid_l = f_s(x_l); z_u, pyramid_u = f_s(x_s)   (two passes: BN statistics per pass,
       as released)
    4. r = g([pyramid_l; pyramid_u])                                   (B_l + B_u, D, H, W)
    5. L_sup = sup_weight (CE + Dice) on z_l (0.5); L_unsup = pseudo_label_loss(z_u, ŷ', q', 0.97)
    6. L_anco = anatomical_contrast_loss(r, [y_l; ŷ'], [1; q' >= 0.7], softmax([z_l; z_u]))
    7. L = L_sup + unsup_weight L_unsup + anco_weight L_anco            (1 and k1 = 0.01)
       with ``weak_bn_update``: the student runs on the weak x_u (train mode, no grad) for its BN statistics
    8. (engine) SGD step; after_optimizer_step: EMA of the teacher, twice with ``double_ema`` (below)

``L_anco`` is :func:`anatomical_contrast_loss` (docs/action.md, 'Anatomical contrast'): prototypes ``μ_c`` = mean representation
of the valid pixels of class c (no grad); hard queries ``P_c < 0.97`` (student probability); 256 anchors per
class drawn with replacement from the hard pool (through :func:`methods.samplers.sample_indices`; uniform as
released); 512 negatives per anchor, classes drawn from the class-relation graph ``softmax_τ(cos(μ_i, μ_j))``
and keys uniformly from the chosen class's valid pixels (no grad); InfoNCE with τ = 0.5 against the
prototype; mean over the present classes (classes without hard queries contribute 0 but count); 0 when
fewer than 2 classes are present.

"As released" vs "as described in the paper" (defaults are as released everywhere):

* ``double_ema`` and ``weak_bn_update`` (docs/action.md, 'Double EMA'). As released, the fine-tuning script
  calls the stage-ii ISD module on ``(x_u, x_s)`` with ``T_s = T_t = 0`` and discards its outputs; the call
  (a) performs an extra EMA update of the teacher, (b) runs the student on the weak ``x_u`` in train mode
  (updating its BatchNorm running statistics, which the evaluated student uses; the output has no part in
  the loss) and (c) runs the teacher and writes ISD queues that nothing reads.

  (a) ``double_ema=True`` applies two EMA updates per step (effective decay ``m^2 = 0.9801``); ``False``
  applies one (the paper's mean teacher, ``m = 0.99``). Timing: the released extra update happens *before*
  the optimiser step (with the pre-step student), here both happen after it: ``θ_t <- m^2 θ_t + (1 - m^2)
  θ_s^{new}`` instead of ``m^2 θ_t + m (1 - m) θ_s^{old} + (1 - m) θ_s^{new}``, a difference of ``m (1 - m)``
  (≈ 0.0099) times one SGD update per step. This keeps :meth:`ActionObjective.loss` free of side effects on
  the teacher.

  (b) ``weak_bn_update=True``: at the end of :meth:`ActionObjective.loss` (after the passes on ``x_l`` and
  ``x_s``, as released) the student runs on the weak ``x_u`` under ``torch.no_grad()`` in the mode the engine
  set (train: BN running statistics move, dropout draws random numbers); the output is dropped, so the loss
  and its gradient are those of ``False``, but the running statistics (hence evaluation) and the random
  stream of later steps differ. It runs whenever the batch has unlabelled images, also with both
  unlabelled-term weights at 0 (the released call does not depend on them). ``False``: no such pass.

  (c) is not reproduced: the teacher's own BN buffers are never read (it runs in train mode, or with
  ``teacher_bn_mode="eval"`` copies the student's at every EMA update), and the queues are unused.
* ``sampler`` (+ ``sampler_groups``, ``sampler_grouping``, ``sampler_allocation``): the anchor sampler.
  ``"uniform"`` is ACTION as released; ``"stratified"`` / ``"stratified_antithetic"`` are ARCO's SG / SAG
  (docs/arco.md), available here as an ablation (they are not part of ACTION). Negatives always follow the
  relation graph with uniform draws inside a class, as released.

Ablations (ACTION paper "w/o L_anco", "w/o L_unsup"): **a weight of 0 removes the term**: it is not
computed (``anco_weight = 0``: no representation head is built or run, no sampling; ``unsup_weight = 0``: no
pseudo-label loss) and it disappears from the logged terms. With both at 0 the teacher pass, the strong view
and the unlabelled student pass are skipped too (supervised-only training with an idle EMA teacher). There
are no separate ``use_*`` switches.

Representations (``docs/methods.md`` "Sparse representations"). With ``representation="sparse"`` (the
default) the head is never run on the full map: :class:`methods.pixel_reps.SparseActionReps` evaluates it
from the pyramid at the anchors (with gradient), at the distinct pixels among all classes' negative draws
(no gradient) and as class prototypes; the numbers are those of the full map up to float rounding. The
reference ``representation="dense"`` builds the map as released (B = 4 + 4, 256 x 256, D = 512:
8 x 512 x 256 x 256 floats ≈ 1 GB, plus the 496-channel upsampled concatenation feeding the head).

Cost. Negatives are 256 x 512 per class (≈ 268 MB each at D = 512, no gradient, kept for the backward pass
of the InfoNCE). Host syncs per step: one (the per-class valid/hard-pool counts, one ``tolist``), plus the
sparse path's deduplication of the negative draws and of the footprint pixels (two on a GPU).
Randomness (samplers, negatives, dropout) comes from torch's global RNG on the step's device, which the
engine seeds and checkpoints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from methods.contrast import (
    hard_query_mask,
    pixel_info_nce,
    relation_graph_probs,
    relation_negative_indices,
)
from methods.ema import BN_MODES, EMATeacher
from methods.errors import ConfigError, DataError
from methods.heads import ActionProjectionHead
from methods.losses import IGNORE_INDEX, pseudo_label_loss, supervised_loss
from methods.objective import (
    Batch,
    LossOutput,
    Objective,
    check_annotated_kinds,
    check_choice,
    check_number,
    detached,
    logits_of,
    strong_view,
)
from methods.pixel_reps import REPRESENTATIONS, DenseReps, MaskRanks, SparseActionReps
from methods.samplers import ALLOCATIONS, GROUPINGS, SAMPLERS, check_strata_used, sample_indices


@dataclass(frozen=True)
class ActionConfig:
    """ACTION stage iii settings (defaults = the released code, docs/action.md, 'Defaults'); validated here.

    Loss weights (a weight of 0 removes the term entirely, see the module docstring):

    * ``sup_weight`` (> 0): ``w`` of ``w (CE + Dice)`` (0.5 as released).
    * ``unsup_weight`` (>= 0): weight of ``L_unsup`` (1, hard-coded as released).
    * ``anco_weight`` (>= 0): k1, weight of ``L_anco`` (0.01, ``--k1``).

    Thresholds (all in [0, 1]):

    * ``unsup_threshold``: ReCo's confidence threshold inside ``L_unsup`` (0.97, ``--strong_threshold``).
    * ``hard_query_threshold``: anchors are pixels whose student probability of their own class is below it
      (0.97, ``--strong_threshold`` reused); 1.0 accepts every pixel with ``P_c < 1``.
    * ``pseudo_valid_threshold``: unlabelled pixels take part in ``L_anco`` (prototypes, anchors, keys) only if
      the teacher confidence after mixing ``q' >= threshold`` (0.7, ``--weak_threshold``).

    Anatomical contrast (docs/action.md, 'Anatomical contrast'):

    * ``num_queries`` (int >= 1): anchors per class (256). ``num_negatives`` (int >= 1): per anchor (512).
    * ``temperature`` (> 0): τ of the InfoNCE *and* of the relation-graph softmax (0.5, ``--temp``).
    * ``repr_dim`` (int >= 1): channels of the representation head (512).
    * ``sampler``: anchor sampler, one of ``SAMPLERS``: ``"uniform"`` (as released) | ``"stratified"`` |
      ``"stratified_antithetic"`` (ARCO's SG/SAG, an ablation). ``sampler_groups`` (perfect square, 16),
      ``sampler_grouping`` (``"flat"`` | ``"spatial"``) and ``sampler_allocation`` (``"systematic"`` |
      ``"largest_remainder"``, spatial only) configure the stratified samplers (see
      :func:`methods.samplers.sample_indices`); with ``"uniform"`` they stay at their defaults (a ConfigError).

    Teacher:

    * ``ema_momentum`` in [0, 1): m (0.99).
    * ``double_ema``: True (as released: two EMA updates per step, a side effect of the discarded ISD call,
      docs/action.md, 'Double EMA') | False (one update per step).
    * ``weak_bn_update``: True (as released: the student also runs on the weak ``x_u``, no gradient, updating
      its BatchNorm running statistics, the other side effect of that call) | False (no such pass).
    * ``teacher_bn_mode``: ``"train"`` (as released: batch statistics, dropout on, the teacher keeps its own
      BN buffers) | ``"eval"`` (running statistics copied from the student at every EMA update).

    Representations (the same numbers either way, see :mod:`methods.pixel_reps`):

    * ``representation``: ``"sparse"`` (default: the head is evaluated from the decoder pyramid only at the
      anchors, at the distinct negative keys and as class means; no (N, D, H, W) map) | ``"dense"`` (the
      reference: the full map, as released).
    """

    sup_weight: float = 0.5
    unsup_weight: float = 1.0
    anco_weight: float = 0.01
    unsup_threshold: float = 0.97
    hard_query_threshold: float = 0.97
    pseudo_valid_threshold: float = 0.7
    num_queries: int = 256
    num_negatives: int = 512
    temperature: float = 0.5
    repr_dim: int = 512
    sampler: str = "uniform"
    sampler_groups: int = 16
    sampler_grouping: str = "flat"
    sampler_allocation: str = "systematic"
    ema_momentum: float = 0.99
    double_ema: bool = True
    weak_bn_update: bool = True
    teacher_bn_mode: str = "train"
    representation: str = "sparse"

    def __post_init__(self) -> None:
        check_number(self, "sup_weight", minimum=0.0, min_inclusive=False)
        check_number(self, "unsup_weight", minimum=0.0)
        check_number(self, "anco_weight", minimum=0.0)
        for field in ("unsup_threshold", "hard_query_threshold", "pseudo_valid_threshold"):
            check_number(self, field, minimum=0.0, maximum=1.0)
        check_number(self, "num_queries", minimum=1, integer=True)
        check_number(self, "num_negatives", minimum=1, integer=True)
        check_number(self, "temperature", minimum=0.0, min_inclusive=False)
        check_number(self, "repr_dim", minimum=1, integer=True)
        check_choice(self, "sampler", SAMPLERS)
        check_number(self, "sampler_groups", minimum=1, integer=True)
        if math.isqrt(self.sampler_groups) ** 2 != self.sampler_groups:
            raise ConfigError(f"ActionConfig.sampler_groups: must be a perfect square, got {self.sampler_groups} (use 9, 16 or 25)")
        check_choice(self, "sampler_grouping", GROUPINGS)
        check_choice(self, "sampler_allocation", ALLOCATIONS)
        check_strata_used(self)
        check_number(self, "ema_momentum", minimum=0.0, maximum=1.0, max_inclusive=False)
        check_annotated_kinds(ActionConfig, {"double_ema": self.double_ema, "weak_bn_update": self.weak_bn_update})
        check_choice(self, "teacher_bn_mode", BN_MODES)
        check_choice(self, "representation", REPRESENTATIONS)


# -- anatomical contrast (docs/action.md, 'Anatomical contrast') ------------------------------------------------


def anatomical_contrast_loss(
    reps: Any,
    labels: torch.Tensor,
    valid: torch.Tensor,
    probs: torch.Tensor,
    *,
    hard_query_threshold: float = 0.97,
    temperature: float = 0.5,
    num_queries: int = 256,
    num_negatives: int = 512,
    sampler: str = "uniform",
    sampler_groups: int = 16,
    sampler_grouping: str = "flat",
    sampler_allocation: str = "systematic",
) -> tuple[torch.Tensor, dict[str, Any]]:
    """ACTION's anatomical contrast ``L_anco`` = ReCo's regional contrast (docs/action.md, 'Anatomical contrast').

    Args:
        reps: float (N, D, H, W) student representations ``r = [r_l; r_u]``; gradients flow through the
            anchors only (prototypes and negative keys are taken under no-grad, as released). Or a row source
            of :mod:`methods.pixel_reps` (``rows``, ``class_means``) that gives the same numbers without the map.
        labels: int64 (N, H, W): ``[y_l; ŷ']``; -1 (ignore) belongs to no class.
        valid: bool (N, H, W): ``M = [1; q' >= 0.7]``.
        probs: float (N, C, H, W): the student's softmax ``P = softmax([z_l; z_u])`` (detached here).
        hard_query_threshold, temperature, num_queries, num_negatives: 0.97, 0.5, 256, 512 as released.
        sampler, sampler_groups, sampler_grouping, sampler_allocation: the anchor sampler
            (:func:`methods.samplers.sample_indices`; ``"uniform"`` as released).

    With ``V_c = {p : labels(p) = c ∧ valid(p)}`` (candidates listed in raster order over (N, H, W)):

    * present classes: ``V_c ≠ ∅``; with fewer than 2 the loss is 0 and nothing is sampled;
    * ``μ_c = mean_{V_c} sg(r)``; hard pool ``H_c = {p ∈ V_c : P_c(p) < hard_query_threshold}``;
    * for each present class i with ``H_i ≠ ∅``: ``num_queries`` anchors from ``H_i`` (sampler, with
      replacement); for each anchor ``num_negatives`` slots, each a class j ≠ i drawn from
      ``π = softmax_τ(cos(μ_i, μ_j))`` over the other present classes, then a key uniformly from ``V_j``
      (:func:`methods.contrast.relation_negative_indices`);
      ``L_i = mean_k -log(e^{cos(a_k, μ_i)/τ} / (e^{cos(a_k, μ_i)/τ} + Σ_n e^{cos(a_k, n_{k,n})/τ}))``
      (:func:`methods.contrast.pixel_info_nce`);
    * ``L_anco = Σ_i L_i / #present`` (classes without hard queries add 0 but count in the denominator).

    Returns ``(loss, info)``: loss a float scalar on ``reps.device`` (0 without gradient when nothing is
    contrasted); info: ``present`` (list of present class ids), ``contrasted`` (classes that had anchors),
    ``counts`` (per class ``|V_c|`` and ``|H_c|``), ``anchor_indices`` {class: flat positions over (N, H, W),
    (num_queries,)}, ``negative_indices`` {class: flat positions, (num_queries, num_negatives)},
    ``class_probs`` {class: relation-graph probabilities over all C classes, 0 for the anchor class and
    absent ones}, ``per_class`` {class: L_i, detached}.
    One host sync (the pool counts).
    """
    where = "anatomical_contrast_loss"
    if isinstance(reps, torch.Tensor):
        if reps.dim() != 4:
            raise DataError(f"{where}: reps must be (N, D, H, W), got {tuple(reps.shape)} (pass a 4-D map)")
        reps = DenseReps(reps)
    num_images, height, width = reps.num_images, reps.height, reps.width
    if probs.dim() != 4 or probs.shape[0] != num_images or tuple(probs.shape[2:]) != (height, width):
        raise DataError(f"{where}: probs must be (N, C, H, W) = ({num_images}, C, {height}, {width}), got {tuple(probs.shape)} "
                        "(pass the softmax of the same images)")
    pixel_shape = (num_images, height, width)
    if labels.shape != pixel_shape or labels.dtype != torch.int64:
        raise DataError(f"{where}: labels must be int64 {pixel_shape}, got {labels.dtype} {tuple(labels.shape)} (one class per pixel)")
    if valid.shape != pixel_shape:
        raise DataError(f"{where}: valid must be bool {pixel_shape}, got {tuple(valid.shape)} (one flag per pixel)")
    num_classes = probs.shape[1]
    device = labels.device

    with torch.no_grad():
        classes = torch.arange(num_classes, device=device).view(1, -1, 1, 1)
        member = (labels.unsqueeze(1) == classes) & valid.bool().unsqueeze(1)               # (N, C, H, W)
        hard = member & hard_query_mask(probs.detach(), hard_query_threshold)
        member_flat = member.transpose(0, 1).reshape(num_classes, -1)                       # (C, N*H*W)
        hard_flat = hard.transpose(0, 1).reshape(num_classes, -1)
        counts = torch.stack([member_flat.sum(1), hard_flat.sum(1)])
    valid_count, hard_count = counts.tolist()                                               # the host sync
    present = [c for c in range(num_classes) if valid_count[c] > 0]
    contrasted = [c for c in present if hard_count[c] > 0]
    info: dict[str, Any] = {
        "present": present, "contrasted": [], "counts": (valid_count, hard_count),
        "anchor_indices": {}, "negative_indices": {}, "class_probs": {}, "per_class": {},
    }
    if len(present) < 2 or not contrasted:
        return probs.new_zeros(()), info
    info["contrasted"] = contrasted

    with torch.no_grad():
        prototypes, present_mask = reps.class_means(labels, valid.bool(), num_classes)  # (C, D)
        hard_pools = {c: MaskRanks(hard_flat[c]) for c in contrasted}
        member_pools = MaskRanks(member_flat.reshape(-1))       # over the concatenation of the C class pools

    # anchors: one gather for every anchor class (with gradient)
    spatial = sampler != "uniform" and sampler_grouping == "spatial"
    pixels = height * width
    positions = []
    for c in contrasted:
        extra: dict[str, Any] = {}
        if spatial:
            every = hard_pools[c].positions(torch.arange(hard_count[c], device=device)) % pixels
            extra = {"positions": torch.stack([every // width, every % width], 1), "grid_shape": (height, width)}
        ranks = sample_indices(
            hard_count[c], num_queries, sampler, groups=sampler_groups, grouping=sampler_grouping,
            allocation=sampler_allocation, device=device, **extra,
        )
        flat = hard_pools[c].positions(ranks)
        info["anchor_indices"][c] = flat
        positions.append(flat)
    anchors = reps.rows(torch.cat(positions)).view(len(contrasted), num_queries, -1)

    offsets = [0]
    for c in range(num_classes):
        offsets.append(offsets[-1] + valid_count[c])
    total = anchors.new_zeros(())
    # every class's negative keys first (same RNG order as one class at a time), then one read of the
    # representations at all of them: a sparse source computes each distinct pixel once
    drawn = []
    for c in contrasted:
        with torch.no_grad():
            # relation graph over all C prototypes; absent classes get probability exactly 0 (empty pools)
            class_probs, others = relation_graph_probs(
                prototypes, c, temperature, present=present_mask, return_indices=True
            )
            sizes = counts[0][others]  # on the device: no host-to-device copy (which would sync)
            # index into the concatenation of the other classes' pools (increasing class order, as
            # relation_graph_probs orders them) -> rank in the concatenation of all C pools -> pixel
            concat = relation_negative_indices(sizes, class_probs, num_queries, num_negatives)
            global_rank = concat + valid_count[c] * (concat >= offsets[c]).to(concat.dtype)
            flat_negatives = member_pools.positions(global_rank) % (num_images * pixels)
            full_probs = torch.zeros(num_classes, device=device, dtype=class_probs.dtype)
            full_probs[others] = class_probs
        drawn.append(flat_negatives)
        info["negative_indices"][c] = flat_negatives
        info["class_probs"][c] = full_probs
    with torch.no_grad():
        keys = reps.rows(torch.cat(drawn).reshape(-1)).view(len(contrasted), num_queries, num_negatives, -1)
    for k, c in enumerate(contrasted):
        loss_c = pixel_info_nce(anchors[k], prototypes[c], keys[k], temperature)
        info["per_class"][c] = loss_c.detach()
        total = total + loss_c
    return total / len(present), info


# -- the objective ----------------------------------------------------------------------------------------------

class ActionObjective(Objective):
    """ACTION stage iii fine-tuning (module docstring; docs/action.md, 'One fine-tuning step').

    Submodules: ``student``, ``teacher`` (:class:`EMATeacher`), ``head`` (:class:`ActionProjectionHead`,
    only when ``anco_weight > 0``; ``None`` otherwise). ``state_dict`` covers all of them; ``eval_model()``
    is the student UNet.

    The model must expose ``pyramid_channels`` (as :class:`methods.unet.UNet`) and return
    ``UNetOutput``-like outputs (``.logits``, ``.pyramid``).

    Logged terms (present only when their weight is > 0): ``sup`` (weighted), ``ce``, ``dice``, ``unsup``,
    ``anco`` — all unweighted except ``sup``.
    """

    name = "action"
    config_class = ActionConfig
    requires_unlabelled = True
    requires_strong_augment = True
    mixes_strong_views = True

    def __init__(self, model: nn.Module, config: ActionConfig | None = None) -> None:
        super().__init__(model, config)
        cfg = self.config
        channels = getattr(model, "pyramid_channels", None)
        if channels is None:
            raise ConfigError(f"{type(self).__name__}: the model lacks `pyramid_channels` (use methods.unet.UNet, model.name 'unet')")
        self.teacher = EMATeacher(model, momentum=cfg.ema_momentum, copy_buffers=cfg.teacher_bn_mode == "eval")
        self.head = ActionProjectionHead(tuple(channels), cfg.repr_dim) if cfg.anco_weight > 0 else None

    def loss(self, batch: Batch, step: int, max_steps: int) -> LossOutput:
        self.check_batch(batch)
        cfg = self.config
        x_l, y_l, x_u = batch.labelled_image, batch.label, batch.unlabelled_image
        use_unsup, use_anco = cfg.unsup_weight > 0, cfg.anco_weight > 0

        out_l = self.student(x_l)
        z_l = logits_of(out_l)
        sup, parts = supervised_loss(z_l, y_l, cfg.sup_weight)
        total = sup
        terms: dict[str, torch.Tensor] = {"sup": sup, **parts}
        if not (use_unsup or use_anco):
            self._weak_bn_update(x_u)
            return LossOutput(total, detached(terms))

        # 1-2: pseudo-labels from the teacher on the weak view, then the strong view
        with torch.no_grad():
            probs_weak = torch.softmax(logits_of(self.teacher.predict(x_u, cfg.teacher_bn_mode)), dim=1)
            confidence, pseudo = probs_weak.max(dim=1)
        view = strong_view(batch.strong_augment, x_u, pseudo, confidence)

        # 3: the student on the strong view (a separate pass, as released)
        out_u = self.student(view.image)
        z_u = logits_of(out_u)

        if use_unsup:
            unsup = pseudo_label_loss(z_u, view.pseudo_label, view.confidence, cfg.unsup_threshold)
            total = total + cfg.unsup_weight * unsup
            terms["unsup"] = unsup

        if use_anco:
            # 4: representations of [l; u] in one head pass (the head is per-image: batching is exact). The
            # pyramid is made channels-last (a copy of the small pyramid only) so that the head's output is
            # channels-last too and the sampled pixels are gathered as contiguous rows
            # (:func:`methods.pixel_reps.gather_pixels`).
            pyramid = [
                torch.cat(levels, 0).contiguous(memory_format=torch.channels_last)
                for levels in zip(out_l.pyramid, out_u.pyramid)
            ]
            if cfg.representation == "sparse":
                reps = SparseActionReps(pyramid, self.head, x_l.shape[2:])
            else:
                reps = self.head(pyramid, size=x_l.shape[2:])
            with torch.no_grad():
                labels = torch.cat([y_l, view.pseudo_label])
                valid = torch.cat([
                    torch.ones_like(y_l, dtype=torch.bool),
                    (view.confidence >= cfg.pseudo_valid_threshold) & view.pseudo_label.ne(IGNORE_INDEX),
                ])
                probs = torch.softmax(torch.cat([z_l, z_u]).detach(), dim=1)
            anco, _ = anatomical_contrast_loss(
                reps, labels, valid, probs,
                hard_query_threshold=cfg.hard_query_threshold, temperature=cfg.temperature,
                num_queries=cfg.num_queries, num_negatives=cfg.num_negatives, sampler=cfg.sampler,
                sampler_groups=cfg.sampler_groups, sampler_grouping=cfg.sampler_grouping,
                sampler_allocation=cfg.sampler_allocation,
            )
            total = total + cfg.anco_weight * anco
            terms["anco"] = anco

        self._weak_bn_update(x_u)
        return LossOutput(total, detached(terms))

    def _weak_bn_update(self, x_u: torch.Tensor | None) -> None:
        """With ``weak_bn_update`` (as released): the student on the weak (B_u, 1, H, W) ``x_u`` without gradient,
        in the current mode, for the BatchNorm running statistics only (docs/action.md, 'Double EMA')."""
        if self.config.weak_bn_update and x_u is not None:
            with torch.no_grad():
                self.student(x_u)

    def after_optimizer_step(self, step: int) -> None:
        """EMA update of the teacher: twice with ``double_ema`` (as released, docs/action.md, 'Double EMA'), else once."""
        self.teacher.update(self.student)
        if self.config.double_ema:
            self.teacher.update(self.student)
