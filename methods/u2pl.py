"""``u2pl``: the U2PL memory-bank contrast ``L_contrast`` of MONA and ARCO fine-tuning.

MONA and ARCO (:mod:`methods.mona`, :mod:`methods.arco`) use U2PL's per-class contrast (Wang et al., "Semi-Supervised
Semantic Segmentation Using Unreliable Pseudo-Labels", CVPR 2022) as their ``L_contrast``:

* :func:`u2pl_masks`: per-class valid / anchor / negative pixel masks from the labels, the teacher's
  probabilities and the entropy masks;
* :func:`contrast_plan`: which (anchor class, bank class) pairs are contrasted, and the divisor;
* :func:`u2pl_contrast_loss`: the loss of one step (enqueues negatives into the per-class memory banks of
  :class:`methods.memory_bank.ClassMemoryBank`, samples anchors and negatives with the MONA/ARCO sampler,
  InfoNCE against the class prototype).

"As released" vs "as described" flags of this loss (``MonaConfig.u2pl_negative_mask``,
``MonaConfig.valid_class_indexing``) take the values in :data:`NEGATIVE_MASKS` and :data:`VALID_CLASS_INDEXINGS`.
Described in docs/mona.md, 'U2PL contrast' (with docs/mona.md, 'Negative mask', docs/mona.md, 'Valid-class indexing'
and docs/mona.md, 'Memory banks').
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple, Sequence

import torch

from methods.contrast import pixel_info_nce
from methods.errors import ConfigError
from methods.memory_bank import ClassMemoryBank
from methods.pixel_reps import DenseReps, MaskRanks
from methods.recompute import rebuilt_in_backward
from methods.samplers import SamplerConfig

if TYPE_CHECKING:
    from methods.mona import MonaConfig

NEGATIVE_MASKS = ("as_coded", "paper")
VALID_CLASS_INDEXINGS = ("as_coded", "fixed")


class U2PLMasks(NamedTuple):
    """bool (N, C, H, W) each: ``valid`` V_c, ``anchor`` A_c, ``negative`` N_c (docs/mona.md, 'U2PL contrast')."""

    valid: torch.Tensor
    anchor: torch.Tensor
    negative: torch.Tensor


def u2pl_masks(
    labels: torch.Tensor,
    teacher_probs: torch.Tensor,
    low: torch.Tensor,
    high: torch.Tensor,
    num_labelled: int,
    *,
    anchor_threshold: float = 0.3,
    negative_threshold: float = 0.97,
    rank_low: int = 3,
    rank_high: int = 20,
    negative_mask: str = "as_coded",
) -> U2PLMasks:
    """U2PL's per-class pixel masks (docs/mona.md, 'U2PL contrast'); the first ``num_labelled`` images are labelled.

    Args:
        labels: int64 (N, H, W): ``[y_l; ŷ']`` (-1 = ignore, belongs to no class).
        teacher_probs: float (N, C, H, W): ``P^t`` = teacher softmax on the student's inputs.
        low, high: bool (N, H, W): reliable / unreliable entropy masks (all ones on labelled images).

    With ``Y_c = (labels == c)``, ``rank_c`` = position of c in the teacher's descending probabilities:

    * ``valid``  ``V_c = Y_c ∧ low``;
    * ``anchor`` ``A_c = V_c ∧ P^t_c > anchor_threshold``;
    * ``negative`` ``N_c = H_c ∧ high ∧ P^t_c < negative_threshold ∧ G_c`` with
      ``G_c`` = [labelled] ``rank_c < rank_low ∧ labels != c``, [unlabelled] ``rank_low <= rank_c < rank_high``, and

      - ``"as_coded"`` (as released; docs/mona.md, 'Negative mask'): ``H_c = Y_c``. The labelled part needs
        ``labels = c`` and ``labels != c`` at once and is always empty; the unlabelled part needs pseudo-label
        c while the teacher (on the strong view) ranks c low.
      - ``"paper"`` (U2PL's intent, the fix chosen here): ``H_c`` = every non-ignored pixel. Labelled negatives
        of c are then pixels of *other* classes whose teacher top-``rank_low`` includes c (hard negatives);
        unlabelled negatives are unreliable pixels that the teacher ranks c in ``[rank_low, rank_high)`` (for
        4 classes: c least likely), whatever their pseudo-label.
    """
    num_classes = teacher_probs.shape[1]
    classes = torch.arange(num_classes, device=labels.device).view(1, -1, 1, 1)
    member = labels.unsqueeze(1) == classes                                  # Y_c (N, C, H, W)
    valid = member & low.unsqueeze(1)
    anchor = valid & (teacher_probs > anchor_threshold)
    rank = teacher_probs.argsort(dim=1, descending=True).argsort(dim=1)     # rank of class c at each pixel
    labelled = torch.zeros(labels.shape[0], dtype=torch.bool, device=labels.device)
    labelled[:num_labelled] = True
    labelled = labelled.view(-1, 1, 1, 1)
    rank_ok = torch.where(labelled, (rank < rank_low) & ~member, (rank >= rank_low) & (rank < rank_high))
    if negative_mask == "as_coded":
        base = member
    elif negative_mask == "paper":
        base = labels.ne(-1).unsqueeze(1).expand_as(member)
    else:
        raise ConfigError(f"u2pl_masks: negative_mask {negative_mask!r} is not a choice (use one of {list(NEGATIVE_MASKS)})")
    negative = base & high.unsqueeze(1) & (teacher_probs < negative_threshold) & rank_ok
    return U2PLMasks(valid, anchor, negative)


def contrast_plan(present: Sequence[bool], indexing: str = "as_coded") -> tuple[list[tuple[int, int]], int]:
    """Which (anchor/prototype class, bank class) pairs the contrast visits, and the divisor (docs/mona.md,
    'Valid-class indexing').

    ``present[c]`` = ``|V_c| > 0``; ``valid`` = the present classes in increasing order. If ``len(valid) <= 1``
    the loss is 0 (empty plan). Otherwise, for j = 0 .. len(valid) - 1:

    * ``"as_coded"`` (as released): anchors and prototype of class **j**, negatives from the bank of
      class **valid[j]** — misaligned when a lower class is absent (U2PL issue #111);
    * ``"fixed"``: anchors, prototype and bank all of class valid[j].

    The loss is the sum over the plan divided by ``len(valid)`` (a pair whose anchor pool or bank is empty
    contributes 0 but still counts, as released).
    """
    valid = [c for c, flag in enumerate(present) if flag]
    if len(valid) <= 1:
        return [], 0
    if indexing == "as_coded":
        return [(j, c) for j, c in enumerate(valid)], len(valid)
    if indexing == "fixed":
        return [(c, c) for c in valid], len(valid)
    raise ConfigError(f"contrast_plan: indexing {indexing!r} is not a choice (use one of {list(VALID_CLASS_INDEXINGS)})")


def _as_source(reps: Any) -> Any:
    """A (N, D, H, W) tensor as :class:`methods.pixel_reps.DenseReps`; a row source as it is."""
    return DenseReps(reps) if isinstance(reps, torch.Tensor) else reps


def u2pl_contrast_loss(
    reps: Any,
    teacher_reps: Any,
    labels: torch.Tensor,
    teacher_probs: torch.Tensor,
    low: torch.Tensor,
    high: torch.Tensor,
    num_labelled: int,
    banks: ClassMemoryBank,
    config: MonaConfig,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """U2PL memory-bank contrast of MONA/ARCO (docs/mona.md, 'U2PL contrast'; its draws use ARCO's samplers,
    docs/arco.md, 'What ARCO changes'); updates ``banks``.

    Args:
        reps: float (N, D, H, W) student representations ``r`` (gradient flows through the anchors only), or a
            row source of :mod:`methods.pixel_reps` (``rows``, ``class_means``) that gives the same numbers.
        teacher_reps: float (N, D, H, W) ``r^t`` (treated as constants), or a row source.
        labels, teacher_probs, low, high, num_labelled: as :func:`u2pl_masks`.
        banks: the per-class FIFO banks (D-dim keys).
        config: thresholds, ranks, counts, τ, flags and the sampler (:class:`methods.mona.MonaConfig`).

    Steps: masks (:func:`u2pl_masks`); enqueue every class's negatives ``sg(r^t(N_c))`` in raster order
    (only the newest ``capacity`` can survive, so only those are gathered) *before* the loss, as released;
    prototypes ``μ_c = mean_{V_c} sg(r^t)``; for each pair of :func:`contrast_plan`: draw ``num_anchors``
    anchors from ``A_j`` (raster order over (image, row, col); spatial grouping passes their (row, col))
    and ``num_anchors x num_negatives`` negatives from the bank, ``L_j = InfoNCE(anchors, μ_j, negatives, τ)``;
    ``L = Σ_j L_j / |valid|``. One host sync (all mask counts).

    Returns ``(loss, info)``; info: ``plan`` (the visited pairs), ``contrasted`` (pairs that had anchors and
    keys), ``anchor_indices`` {anchor class: sampled flat positions over (N, H, W)}, ``negative_indices``
    {bank class: sampled FIFO positions, (num_anchors, num_negatives)}, ``counts`` (per class |V|, |A|, |N|).
    """
    cfg = config
    reps, teacher_reps = _as_source(reps), _as_source(teacher_reps)
    height, width = reps.height, reps.width
    num_classes = teacher_probs.shape[1]
    masks = u2pl_masks(
        labels, teacher_probs, low, high, num_labelled,
        anchor_threshold=cfg.anchor_threshold, negative_threshold=cfg.negative_threshold,
        rank_low=cfg.negative_rank_low, rank_high=cfg.negative_rank_high, negative_mask=cfg.u2pl_negative_mask,
    )
    anchor_flat = masks.anchor.transpose(0, 1).reshape(num_classes, -1)      # (C, N*H*W), raster order
    negative_flat = masks.negative.transpose(0, 1).reshape(num_classes, -1)
    counts = torch.stack([masks.valid.sum((0, 2, 3)), anchor_flat.sum(1), negative_flat.sum(1)])
    valid_count, anchor_count, negative_count = counts.tolist()             # the one host sync

    # memory-bank insert (before the loss, as released)
    for c in range(num_classes):
        n = negative_count[c]
        if n == 0:
            continue
        keep = min(n, banks.capacity(c))
        ranks = torch.arange(n - keep, n, device=labels.device)
        with torch.no_grad():
            banks.enqueue(c, teacher_reps.rows(MaskRanks(negative_flat[c]).positions(ranks)).detach())

    info: dict[str, Any] = {"counts": (valid_count, anchor_count, negative_count), "anchor_indices": {}, "negative_indices": {}}
    plan, divisor = contrast_plan([v > 0 for v in valid_count], cfg.valid_class_indexing)
    info["plan"] = plan
    active = [(a, b) for a, b in plan if anchor_count[a] > 0 and banks.size(b) > 0]
    info["contrasted"] = active
    if not active:
        return teacher_probs.new_zeros(()), info

    with torch.no_grad():
        valid_pixels = low & labels.ge(0)
        prototypes, _ = teacher_reps.class_means(labels.clamp_min(0), valid_pixels, num_classes)

    sampler = cfg.sampler_config
    pixels = height * width
    positions = []
    for anchor_class, _ in active:
        count = anchor_count[anchor_class]
        pool = MaskRanks(anchor_flat[anchor_class])
        spatial = {}
        if cfg.sampler != "uniform" and cfg.sampler_grouping == "spatial":
            flat = pool.positions(torch.arange(count, device=labels.device)) % pixels
            spatial = {"positions": torch.stack([flat // width, flat % width], 1), "grid_shape": (height, width)}
        ranks = sampler.sample(count, cfg.num_anchors, device=labels.device, **spatial)
        flat_positions = pool.positions(ranks)
        info["anchor_indices"][anchor_class] = flat_positions
        positions.append(flat_positions)
    anchors = reps.rows(torch.cat(positions)).view(len(active), cfg.num_anchors, -1)  # one gather

    flat_sampler = SamplerConfig(cfg.sampler, cfg.sampler_groups, "flat", cfg.sampler_allocation, cfg.sampler_min_block_side)
    total = anchors.new_zeros(())
    for k, (anchor_class, bank_class) in enumerate(active):
        fifo = flat_sampler.sample(banks.size(bank_class), cfg.num_anchors * cfg.num_negatives, device=labels.device)
        fifo = fifo.view(cfg.num_anchors, cfg.num_negatives)
        info["negative_indices"][bank_class] = fifo
        def gather(bank_class=bank_class, fifo=fifo, dtype=anchors.dtype, writes=banks.writes) -> torch.Tensor:
            if banks.writes != writes:  # backward would contrast against other keys than the loss did
                raise RuntimeError(
                    "u2pl_contrast_loss: the memory bank changed between this loss and its backward (a second "
                    "loss() before backward?); call backward before the next loss"
                )
            return banks.gather_transient(bank_class, fifo).to(dtype)

        # the keys land in the banks' scratch buffer, which the next class's gather overwrites: nothing may keep
        # them, and the block below makes autograd keep the gather instead (backward gathers them again)
        negatives = gather()
        with rebuilt_in_backward(negatives, gather):
            total = total + pixel_info_nce(anchors[k], prototypes[anchor_class], negatives, cfg.temperature)
    return total / divisor, info
