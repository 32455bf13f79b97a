"""Pixel-contrast building blocks shared by MONA, ARCO and ACTION.

Pure functions of tensors; they import only torch. None of them synchronises host and device in the hot
path (no ``.item()``, no boolean indexing, no data-dependent shapes): sizes come from tensor shapes, so
the functions are safe inside a CUDA training step. Hyperparameters are validated on the host and raise a
one-line :class:`methods.errors.ConfigError` naming the argument (e.g. a temperature <= 0 fails at the call, not
as NaN later); tensors of the wrong shape or dtype raise a :class:`methods.errors.DataError`.

* :func:`pixel_info_nce`: the InfoNCE over one positive and K negatives per anchor that both pixel losses
  end in (ReCo's ``L_anco`` in ACTION, docs/action.md, 'Anatomical contrast'; U2PL's ``L_contrast`` in
  MONA/ARCO, docs/mona.md, 'U2PL contrast').
* :func:`pixel_entropy`, :func:`entropy_percentile_masks`, :func:`alpha_schedule`: U2PL's entropy masks and
  their linear schedule (MONA/ARCO; docs/mona.md, 'Entropy masks and the alpha schedule').
* :func:`hard_query_mask`, :func:`relation_graph_probs`, :func:`relation_negative_indices`: ACTION's hard
  queries and class-relation-graph negative sampling (docs/action.md, 'Relation-graph negatives').
* :func:`class_prototypes`: per-class mean representations (both methods' positive keys).

Papers: ACTION = You et al., "Bootstrapping Semi-supervised Medical Image Segmentation with Anatomical-aware
Contrastive Distillation", IPMI 2023 (pixel loss from ReCo, Liu et al., ICLR 2022); MONA = You et al.,
"Mine yOur owN Anatomy", TPAMI 2024; ARCO = You et al., "Rethinking Semi-Supervised Medical Image
Segmentation: A Variance-Reduction Perspective", NeurIPS 2023 (pixel loss from U2PL, Wang et al., CVPR 2022).

Cosine similarity. ``cos(a, b) = a.b / (max(|a|, eps) max(|b|, eps))`` (``F.normalize`` semantics) with
``eps = 1e-8``: a zero vector has cosine 0 with everything, exactly like the released
``torch.cosine_similarity`` (this matters for MONA's all-zero initial bank entry; docs/mona.md,
'Negative mask'). The two differ only for vectors with norm below 1e-8.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from methods.errors import ConfigError, DataError
from methods.objective import check_int_argument

COSINE_EPS = 1e-8
ENTROPY_EPS = 1e-10  # U2PL: H = -sum p log(p + 1e-10)
REDUCTIONS = ("mean", "sum", "none")


# -- argument validation (host side) -------------------------------------------------------------------

def _check_float(where: str, name: str, value, *, minimum: float | None = None, maximum: float | None = None,
                 min_inclusive: bool = True) -> float:
    """``value`` as a float if it is a finite number in range; :class:`ConfigError` naming ``where: name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: {name} must be a finite number, got {value!r} (pass a finite number)")
    if minimum is not None and (value < minimum or (value == minimum and not min_inclusive)):
        bound = f">= {minimum:g}" if min_inclusive else f"> {minimum:g}"
        raise ConfigError(f"{where}: {name} must be {bound}, got {value!r} (pass a value {bound})")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{where}: {name} must be <= {maximum:g}, got {value!r} (pass a value <= {maximum:g})")
    return float(value)


def check_temperature(value, where: str = "temperature") -> float:
    """Return ``value`` as a float if it is a finite number > 0; :class:`ConfigError` naming ``where`` otherwise.

    For objective configs and for the functions below (a temperature <= 0 would give inf/NaN logits)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{where}: must be a finite number > 0, got {value!r} (pass a temperature > 0, e.g. 0.5)")
    return float(value)


def _cosine_rows(x: torch.Tensor, eps: float) -> torch.Tensor:
    """``1 / max(|x|, eps)`` over the last dimension (reads ``x`` once; no normalised copy of ``x``), in float32 at
    least: in half precision ``eps`` rounds to 0, so an all-zero key (MONA's empty bank entries) gave 1/0 = inf and a
    NaN cosine under fp16 autocast where the norm is not promoted (the CPU's)."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    norm = torch.linalg.vector_norm(x, dim=-1) if x.dtype == dtype else torch.linalg.vector_norm(x, dim=-1, dtype=dtype)
    return norm.clamp_min(eps).reciprocal()


# -- InfoNCE -------------------------------------------------------------------------------------------

def pixel_info_nce(
    anchors: torch.Tensor,
    positive: torch.Tensor,
    negatives: torch.Tensor,
    temperature: float,
    *,
    reduction: str = "mean",
    eps: float = COSINE_EPS,
    negatives_normalized: bool = False,
) -> torch.Tensor:
    """InfoNCE with one positive and K negatives per anchor, on cosine similarities (docs/action.md,
    'Anatomical contrast'; docs/mona.md, 'U2PL contrast').

    ``loss_k = -log( exp(cos(a_k, p_k)/τ) / (exp(cos(a_k, p_k)/τ) + Σ_n exp(cos(a_k, n_{k,n})/τ)) )``,
    i.e. cross-entropy of the logits ``[cos(a_k, p_k), cos(a_k, n_{k,1..K})] / τ`` with target 0 — what the
    released ReCo/U2PL code computes with ``torch.cosine_similarity`` and ``F.cross_entropy``. Both methods
    use τ = 0.5 and 256 anchors x 512 negatives per class.

    Args:
        anchors: float (N, D), N >= 1: the (student) anchor representations; gradients flow through them.
        positive: float (N, D), (1, D) or (D,): one positive key per anchor, or one shared by all anchors
            (the class prototype, as both methods use it).
        negatives: float (N, K, D), K >= 0 negatives per anchor (may be a non-contiguous view).
        temperature: τ > 0 (ConfigError otherwise).
        reduction: ``"mean"`` over anchors (default, as released), ``"sum"`` or ``"none"`` -> (N,).
        eps: norm floor of the cosine; a zero vector (e.g. MONA's all-zero bank entry) gives cosine 0.
        negatives_normalized: promise that every negative is a unit vector or zero (e.g. keys normalised
            once at enqueue or pool-building time; cosine is scale-invariant so the loss is unchanged);
            skips the norm pass over the (N, K, D) negatives. Not checked (a check would cost that pass).

    Returns a float scalar (or (N,) for ``reduction="none"``). Gradients reach every input that requires
    them; the methods pass detached positives/negatives, so only the anchors (the student) are trained.

    Memory: the negatives are read by one batched matrix-vector product and (unless
    ``negatives_normalized``) one norm reduction; no normalised (N, K, D) copy and no
    ``[positive | negatives]`` concatenation is made (the released code materialises both, ~2 x 268 MB
    per class at the paper size), so the extra memory is O(N K). No host sync.
    """
    where = "pixel_info_nce"
    temperature = check_temperature(temperature, f"{where}: temperature")
    _check_float(where, "eps", eps, minimum=0.0, min_inclusive=False)
    if reduction not in REDUCTIONS:
        raise ConfigError(f"{where}: reduction {reduction!r} is not a choice (use one of {list(REDUCTIONS)})")
    if anchors.dim() != 2 or anchors.shape[0] < 1:
        raise DataError(f"{where}: anchors must be (N, D) with N >= 1, got {tuple(anchors.shape)} (pass one row per anchor)")
    n, d = anchors.shape
    if not (positive.shape == (d,) or (positive.dim() == 2 and positive.shape[1] == d and positive.shape[0] in (1, n))):
        raise DataError(f"{where}: positive must be ({n}, {d}), (1, {d}) or ({d},), got {tuple(positive.shape)} (one key per anchor or one shared)")
    if negatives.dim() != 3 or negatives.shape[0] != n or negatives.shape[2] != d:
        raise DataError(f"{where}: negatives must be ({n}, K, {d}), got {tuple(negatives.shape)} (K keys per anchor, the anchors' D)")

    unit = F.normalize(anchors, dim=-1, eps=eps)                                      # (N, D)
    pos = (unit * positive).sum(-1) * _cosine_rows(positive, eps)                     # (N,)
    # row-vector x matrix form (N,1,D) @ (N,D,K): BLAS reads each anchor's negatives as one contiguous
    # transposed GEMV, ~5x faster on CPU than the (N,K,D) @ (N,D,1) form
    neg = torch.bmm(unit.unsqueeze(1), negatives.transpose(1, 2)).squeeze(1)          # (N, K)
    if not negatives_normalized:
        neg = neg * _cosine_rows(negatives, eps)
    logits = torch.cat([pos.unsqueeze(1), neg], dim=1) / temperature                   # (N, 1 + K)
    loss = torch.logsumexp(logits, dim=1) - logits[:, 0]
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


# -- U2PL entropy masks (MONA/ARCO) --------------------------------------------------------------------

def pixel_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Per-pixel entropy ``H = -Σ_c p_c log(p_c + 1e-10)`` (U2PL's form); probs float (B, C, H, W) -> (B, H, W)."""
    if probs.dim() != 4:
        raise DataError(f"pixel_entropy: probs must be (B, C, H, W), got {tuple(probs.shape)} (pass softmax maps)")
    return -(probs * torch.log(probs + ENTROPY_EPS)).sum(dim=1)


def _sorted_percentile(values: torch.Tensor, count: torch.Tensor, percent: float) -> torch.Tensor:
    """The ``percent``-th percentile of the first ``count`` entries of an ascending 1-D tensor, with linear interpolation
    between the two nearest ranks (``numpy.percentile``'s default method, which U2PL calls); ``count`` a 0-d int64
    tensor on the device (``count >= 1``). No host sync: the ranks are gathered, not used as Python indices. The
    position is computed in float64 (as the host's Python floats) and the interpolation in float32 at least (as
    ``torch.lerp`` with a Python weight computes it): the same thresholds as the host-index form this replaced, in half
    precision too (``tests/methods/test_contrast.py``). Needs float64 on the device (CPU and CUDA have it). 0-d tensor."""
    position = count.double().sub(1).mul(percent / 100.0)
    low = torch.minimum(position.floor().long(), count - 1)
    high = torch.minimum(low + 1, count - 1)
    lo, hi = values.gather(0, low.view(1)).squeeze(0), values.gather(0, high.view(1)).squeeze(0)
    compute = torch.promote_types(values.dtype, torch.float32)
    weight = (position - low.double()).to(compute)
    return torch.lerp(lo.to(compute), hi.to(compute), weight).to(values.dtype).clamp(lo, hi)


def entropy_percentile_masks(
    probs: torch.Tensor, alpha_percent: float, valid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """U2PL's reliable/unreliable pixel masks by entropy percentile (MONA/ARCO; docs/mona.md,
    'Entropy masks and the alpha schedule').

    ``H`` = :func:`pixel_entropy` of ``probs``; over all pixels of the batch (flattened),
    ``low = H <= percentile_α(H)`` (reliable pixels: anchors and prototypes come from them) and
    ``high = H >= percentile_{100-α}(H)`` (unreliable pixels: memory-bank candidates). Percentiles use
    linear interpolation (``numpy.percentile``'s default, as U2PL). As released, MONA passes the *student*
    softmax on the strong unlabelled view (known bug 5 of the release, docs/overview.md, 'Known bugs of the
    released code'; U2PL uses the teacher's) and sets the labelled images' masks to all ones itself.

    Args:
        probs: float (B, C, H, W) softmax probabilities.
        alpha_percent: α in [0, 100] (ConfigError otherwise), e.g. :func:`alpha_schedule`.
        valid: optional bool (B, H, W): the pixels whose mixed pseudo-label is not ignored (``>= 0``). As
            released, the percentiles are then taken over these pixels only and both masks are False elsewhere.
            The masks differ from the unmasked ones only when some pixel is ignored (``data.strong_mix="cutout"``),
            and then at valid pixels too (the thresholds move). No valid pixel at all gives two empty masks (the
            release's ``numpy.percentile`` raises there); a single one is in both masks.

    Returns ``(low, high)``, bool (B, H, W) each. Edge cases (with at least one valid pixel): α = 0 gives ``low`` =
    the pixels whose entropy equals the minimum and ``high`` = those equal to the maximum (never empty); α = 100
    gives all (valid) pixels in both; α = 50 splits at the median (a pixel exactly at the median is in both). Ties
    at a threshold are included. The schedule never reaches 0 (its last value is α0/E). The sort is on the device,
    no sync.
    """
    alpha = _check_float("entropy_percentile_masks", "alpha_percent", alpha_percent, minimum=0.0, maximum=100.0)
    if probs.dim() != 4 or probs.numel() == 0:
        raise DataError(f"entropy_percentile_masks: probs must be a non-empty (B, C, H, W), got {tuple(probs.shape)} (pass softmax maps)")
    if valid is not None and (valid.dtype != torch.bool or valid.shape != probs[:, 0].shape):
        raise DataError(f"entropy_percentile_masks: valid must be a bool (B, H, W) = {tuple(probs[:, 0].shape)}, got "
                        f"{valid.dtype} {tuple(valid.shape)} (pass pseudo_label >= 0)")
    with torch.no_grad():  # masks only: no graph through the entropy
        entropy = pixel_entropy(probs)
        keep = torch.ones_like(entropy, dtype=torch.bool) if valid is None else valid
        # ignored pixels sort after every kept one (+inf): the kept entropies are the sorted prefix
        ordered = entropy.masked_fill(~keep, math.inf).flatten().sort().values
        count = keep.sum().clamp_min(1)
        low_threshold = _sorted_percentile(ordered, count, alpha)
        high_threshold = _sorted_percentile(ordered, count, 100.0 - alpha)
        return (entropy <= low_threshold) & keep, (entropy >= high_threshold) & keep


def alpha_schedule(step: int, max_steps: int, steps_per_epoch: int, alpha0: float = 20.0) -> float:
    """U2PL's linearly decaying entropy percentile (MONA/ARCO; docs/mona.md, 'Entropy masks and the alpha
    schedule').

    ``α_t = α0 (1 - e / E)`` with epoch ``e = step // steps_per_epoch`` and ``E = max_steps // steps_per_epoch + 1``
    (as released: ``epoch / max_epoch`` with ``max_epoch = max_iterations // len(loader) + 1``). ``step`` counts
    from 0; ``0 <= step <= max_steps``, ``max_steps >= 1``, ``steps_per_epoch >= 1``, ``alpha0`` in [0, 100]
    (ConfigError otherwise). α_0 = α0 at step 0 and stays > 0 (>= α0 / E) up to ``max_steps``.
    """
    where = "alpha_schedule"
    max_steps = check_int_argument(where, "max_steps", max_steps, 1)
    steps_per_epoch = check_int_argument(where, "steps_per_epoch", steps_per_epoch, 1)
    step = check_int_argument(where, "step", step, 0)
    if step > max_steps:
        raise ConfigError(f"{where}: step must be <= max_steps={max_steps}, got {step} (steps count from 0 to max_steps)")
    alpha0 = _check_float(where, "alpha0", alpha0, minimum=0.0, maximum=100.0)
    epoch = step // steps_per_epoch
    epochs = max_steps // steps_per_epoch + 1
    return alpha0 * (1.0 - epoch / epochs)


# -- ACTION: hard queries and the class-relation graph ------------------------------------------------

def hard_query_mask(class_prob: torch.Tensor, threshold: float = 0.97) -> torch.Tensor:
    """ACTION/ReCo hard queries: ``P_c(p) < threshold``, 0.97 as released (docs/action.md, 'Anatomical contrast').

    class_prob: float (P,) (any shape works) — the student's softmax probability of each pixel's own class.
    threshold in [0, 1] (ConfigError otherwise). Returns bool of the same shape; the caller ANDs it with
    the class's valid-pixel mask.
    """
    threshold = _check_float("hard_query_mask", "threshold", threshold, minimum=0.0, maximum=1.0)
    return class_prob < threshold


def relation_graph_probs(
    prototypes: torch.Tensor,
    anchor_class: int,
    temperature: float,
    *,
    present: torch.Tensor | None = None,
    return_indices: bool = False,
    eps: float = COSINE_EPS,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """ACTION's class-relation graph: which other class to draw hard negatives from (docs/action.md,
    'Relation-graph negatives').

    ``π_j = softmax_τ(cos(μ_i, μ_j))`` over the other classes ``j != i`` (i = ``anchor_class``): classes whose
    prototype is more similar to the anchor class's get more negatives. Computed under ``torch.no_grad``
    (probabilities only steer sampling, as released).

    Order of the result: the other rows in increasing index order, ``[0, .., i-1, i+1, .., J-1]`` (the
    released ReCo code uses the cyclic order ``[i+1, .., J-1, 0, .., i-1]``; the distribution is the same).
    ``return_indices=True`` also returns those row indices.

    Args:
        prototypes: float (J, D), J >= 2, one row per class (e.g. only the present classes, or all C with
            ``present``).
        anchor_class: row index i in [0, J).
        temperature: τ > 0 (ACTION uses the loss temperature, 0.5).
        present: optional bool (J,): classes marked absent get probability exactly 0 (no sync; they are
            never drawn by :func:`relation_negative_indices`). At least one other class must be present,
            otherwise the result is NaN (the objective returns 0 loss when fewer than 2 classes are present).

    Returns float (J-1,) probabilities summing to 1, or ``(probs, indices int64 (J-1,))``.
    """
    where = "relation_graph_probs"
    temperature = check_temperature(temperature, f"{where}: temperature")
    if prototypes.dim() != 2 or prototypes.shape[0] < 2:
        raise DataError(f"{where}: prototypes must be (J, D) with J >= 2, got {tuple(prototypes.shape)} (one row per class, at least 2)")
    count = prototypes.shape[0]
    if isinstance(anchor_class, bool) or not isinstance(anchor_class, int) or not 0 <= anchor_class < count:
        raise ConfigError(f"{where}: anchor_class must be an int in [0, {count}), got {anchor_class!r} (a row of prototypes)")
    if present is not None and present.shape != (count,):
        raise DataError(f"{where}: present must be bool ({count},), got {tuple(present.shape)} (one flag per prototype row)")
    others = torch.cat([
        torch.arange(anchor_class, device=prototypes.device),
        torch.arange(anchor_class + 1, count, device=prototypes.device),
    ])
    with torch.no_grad():
        unit = F.normalize(prototypes, dim=-1, eps=eps)
        similarity = unit[others] @ unit[anchor_class]
        if present is not None:
            similarity = similarity.masked_fill(~present[others].bool(), float("-inf"))
        probs = torch.softmax(similarity.float() / temperature, dim=0)
    return (probs, others) if return_indices else probs


def relation_negative_indices(
    pool_sizes: Sequence[int] | torch.Tensor,
    class_probs: torch.Tensor,
    num_anchors: int,
    num_negatives: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Indices of relation-graph negatives into the concatenation of the key pools (docs/action.md,
    'Relation-graph negatives').

    For each of the ``num_anchors x num_negatives`` slots: a class ``j ~ Categorical(class_probs)`` (inverse
    CDF of one uniform), then a key uniformly with replacement from pool ``j`` (``offset_j + (r mod n_j)``
    with a uniform 62-bit integer ``r``; the modulo bias is below 2^-38 for pools under 2^24 keys). Same
    distribution as the released per-row, per-class ``np.random.randint`` loop, fully vectorised.

    Args:
        pool_sizes: J' ints (host sequence or int64 tensor), n_j = size of pool j; a pool may be empty only
            if its probability is exactly 0 (not checked: that would need a host sync).
        class_probs: float (J',) non-negative, positive sum (need not be normalised).
        num_anchors, num_negatives: ints >= 1 and >= 0.
        generator: optional ``torch.Generator`` on ``class_probs.device``.

    Returns int64 (num_anchors, num_negatives) on ``class_probs.device``: indices into one concatenated key
    tensor built once per step.
    """
    where = "relation_negative_indices"
    num_anchors = check_int_argument(where, "num_anchors", num_anchors, 1)
    num_negatives = check_int_argument(where, "num_negatives", num_negatives, 0)
    device = class_probs.device
    if isinstance(pool_sizes, torch.Tensor):
        sizes = pool_sizes.to(device=device, dtype=torch.int64)
    else:  # host ints: an asynchronous copy (a blocking one would wait for the device's queued work)
        sizes = torch.tensor(list(pool_sizes), dtype=torch.int64).to(device, non_blocking=True)
    if class_probs.dim() != 1 or class_probs.shape[0] < 1 or sizes.shape != class_probs.shape:
        raise DataError(
            f"{where}: class_probs must be (J',) with J' >= 1 and match pool_sizes, got "
            f"{tuple(class_probs.shape)} and {tuple(sizes.shape)} (one probability per key pool)"
        )
    slots = num_anchors * num_negatives
    offsets = torch.cumsum(sizes, 0) - sizes
    cdf = torch.cumsum(class_probs.detach().float(), 0)
    cdf = cdf / cdf[-1]
    uniform = torch.rand(slots, generator=generator, device=device)
    labels = torch.searchsorted(cdf, uniform, right=True).clamp_(max=class_probs.shape[0] - 1)
    count = sizes[labels]
    raw = torch.randint(0, 2**62, (slots,), generator=generator, device=device, dtype=torch.int64)
    within = torch.remainder(raw, count.clamp(min=1))
    return (offsets[labels] + within).view(num_anchors, num_negatives)


# -- prototypes ----------------------------------------------------------------------------------------

def class_prototypes(
    reps: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean representation of each class over its valid pixels: the positive keys ``μ_c`` of both methods
    (docs/action.md, 'Anatomical contrast'; docs/mona.md, 'U2PL contrast').

    ``μ_c = mean_{p : labels(p) = c ∧ valid(p)} reps(p)``; ``present_c`` = that set is non-empty. Labels
    outside [0, num_classes) (e.g. the ignore index -1) count as invalid. Absent classes get a zero row.
    Gradients flow into ``reps``; ACTION's prototypes are taken under no-grad and MONA's come from the
    teacher (``sg(r^t)``), so callers pass detached reps or wrap the call in ``torch.no_grad``.

    Args:
        reps: float (P, D) pixel representations, or (B, D, H, W) feature maps (no permuted copy is made).
        labels: int64 (P,) or (B, H, W).
        valid: bool (P,) or (B, H, W).
        num_classes: C >= 1.

    Returns ``(prototypes float (C, D), present bool (C,))``. Computed as one-hot^T @ reps (a GEMM; no
    (P, D) weighted copy), no host sync.
    """
    where = "class_prototypes"
    num_classes = check_int_argument(where, "num_classes", num_classes, 1)
    if reps.dim() == 2:
        pixel_shape = reps.shape[:1]
    elif reps.dim() == 4:
        pixel_shape = (reps.shape[0], *reps.shape[2:])
    else:
        raise DataError(f"{where}: reps must be (P, D) or (B, D, H, W), got {tuple(reps.shape)} (pixel rows or feature maps)")
    if labels.shape != pixel_shape or valid.shape != pixel_shape:
        raise DataError(
            f"{where}: labels and valid must be {tuple(pixel_shape)}, got {tuple(labels.shape)} and {tuple(valid.shape)} "
            f"(one entry per pixel of reps)"
        )
    if labels.dtype != torch.int64:
        raise DataError(f"{where}: labels must be int64, got {labels.dtype} (pass class indices)")
    classes = torch.arange(num_classes, device=labels.device)
    member = (labels.unsqueeze(-1) == classes) & valid.bool().unsqueeze(-1)         # (..., C) bool
    counts = member.flatten(0, -2).sum(0)                                          # (C,) int64
    weights = member.to(reps.dtype)
    if reps.dim() == 2:
        sums = weights.t() @ reps                                                  # (C, D)
    else:
        b, d = reps.shape[:2]
        sums = torch.bmm(reps.reshape(b, d, -1), weights.reshape(b, -1, num_classes)).sum(0).t()  # (C, D)
    prototypes = sums / counts.clamp(min=1).unsqueeze(1).to(sums.dtype)
    return prototypes, counts > 0
