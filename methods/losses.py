"""Supervised, pseudo-label and consistency losses shared by every objective.

Pure functions of tensors; no host-device synchronisation (no ``.item()``, no boolean indexing):
results stay on the input's device, so they are safe inside a CUDA training step.

* :func:`supervised_loss`: ``w (CE + batch Dice incl. background)`` (docs/shared.md, 'Supervised loss').
* :func:`pseudo_label_loss`: ReCo's confidence-fraction-weighted CE on strong views (docs/shared.md,
  'Pseudo-label loss').
* :func:`softmax_mse_consistency`: the mean-teacher consistency (SSL4MIS ``train_mean_teacher_2D``).
* :func:`sigmoid_rampup`: the standard mean-teacher ramp-up ``exp(-5 (1 - t)^2)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from methods.errors import ConfigError, DataError

DICE_SMOOTH = 1e-5
IGNORE_INDEX = -1


def _check_logits_target(name: str, logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.dim() != 4:
        raise DataError(f"{name}: logits must be (B, C, H, W), got shape {tuple(logits.shape)} (pass the network's logits)")
    if target.dim() != 3 or target.shape != (logits.shape[0], *logits.shape[2:]):
        raise DataError(
            f"{name}: target must be (B, H, W) = {(logits.shape[0], *logits.shape[2:])}, got {tuple(target.shape)} "
            f"(labels must match the images' batch and size)"
        )
    if target.dtype != torch.int64:
        raise DataError(f"{name}: target must be int64 class indices, got {target.dtype} (convert labels with .long())")


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Batch-level soft Dice loss over softmax probabilities, background included (docs/shared.md,
    'Supervised loss').

    ``L = (1/C) sum_c [1 - (2 sum p_c y_c + 1e-5) / (sum p_c^2 + sum y_c^2 + 1e-5)]``, sums over all pixels of
    all images. logits float (B, C, H, W); target int64 (B, H, W) in [0, C). Returns a float scalar, in float32 at
    least: the probabilities are computed in float32 from bf16/fp16 logits (CPU autocast runs softmax in bf16, where
    the ratio near 1 moves in steps of 0.004, so the loss of a good prediction read 0.0029 for 0.0040, or exactly 0:
    the methods review; CUDA autocast runs softmax in float32 anyway).
    """
    _check_logits_target("dice_loss", logits, target)
    probs = torch.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=1)
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (0, 2, 3)
    intersection = (probs * onehot).sum(dims)
    denominator = (probs * probs).sum(dims) + (onehot * onehot).sum(dims)
    return (1.0 - (2.0 * intersection + DICE_SMOOTH) / (denominator + DICE_SMOOTH)).mean()


def supervised_loss(
    logits: torch.Tensor, target: torch.Tensor, weight: float = 1.0
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``L_sup = weight * (CE + Dice)`` on labelled images (docs/shared.md, 'Supervised loss').

    Args:
        logits: float (B_l, C, H, W) student logits.
        target: int64 (B_l, H, W) labels in [0, C) (no ignore index).
        weight: ``w``; 1.0 in MONA/ARCO fine-tuning, 0.5 in ACTION.

    Returns ``(total, {"ce": mean pixel cross-entropy, "dice": batch Dice loss})``; the terms are
    unweighted and still attached to the graph (callers detach them for logging).
    """
    _check_logits_target("supervised_loss", logits, target)
    ce = F.cross_entropy(logits, target)
    dice = dice_loss(logits, target)
    return weight * (ce + dice), {"ce": ce, "dice": dice}


def pseudo_label_loss(
    student_logits: torch.Tensor,
    pseudo: torch.Tensor,
    confidence: torch.Tensor,
    threshold: float = 0.97,
) -> torch.Tensor:
    """ReCo's unsupervised loss on (mixed, strongly augmented) unlabelled images (docs/shared.md,
    'Pseudo-label loss').

    Per image b, ``w_b = |{valid p : q_p >= threshold}| / |{valid p}|`` (valid = pseudo-label != -1);
    per pixel ``l_p = CE(z_p, y_hat_p)`` (0 where ignored); ``L = mean over {p : l_p > 0} of w_b(p) l_p``.

    Args:
        student_logits: float (B, C, H, W), student on the strong view (gradient flows here).
        pseudo: int64 (B, H, W), teacher pseudo-labels, -1 = ignore.
        confidence: float (B, H, W), teacher max-softmax confidence ``q`` (no gradient).
        threshold: ``--strong_threshold``, 0.97 as released.

    Differences from the released code, identical on its inputs: the released numerator counts every
    pixel with ``q >= threshold``, valid or not, but its mixing sets ``q = 0`` wherever the label is -1,
    so the counts agree. Where the released code divides by zero (an image with no valid pixel: NaN) or
    averages an empty set (no pixel with ``l_p > 0``: NaN), this returns weight 0 / loss 0.
    Returns a float scalar on the input's device.
    """
    _check_logits_target("pseudo_label_loss", student_logits, pseudo)
    if confidence.shape != pseudo.shape:
        raise DataError(
            f"pseudo_label_loss: confidence must have the pseudo-label shape {tuple(pseudo.shape)}, got {tuple(confidence.shape)} "
            f"(one confidence per pixel)"
        )
    batch = pseudo.shape[0]
    valid = pseudo.ne(IGNORE_INDEX)
    confident = (confidence.detach() >= threshold) & valid
    # the counts in float32 at least: a 256 x 256 image's 65 536 pixels are inf in half precision (--amp fp16)
    count_dtype = torch.promote_types(student_logits.dtype, torch.float32)
    weight = confident.reshape(batch, -1).sum(1).to(count_dtype) / valid.reshape(batch, -1).sum(1).clamp_min(1)
    pixel_loss = F.cross_entropy(student_logits, pseudo, reduction="none", ignore_index=IGNORE_INDEX)
    selected = (pixel_loss > 0).to(pixel_loss.dtype)
    total = (weight[:, None, None] * pixel_loss * selected).sum()
    return total / selected.sum().clamp_min(1.0)


def softmax_mse_consistency(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean-teacher consistency: ``mean((softmax(z_s) - softmax(z_t))^2)`` over all B x C x H x W elements.

    student_logits, teacher_logits: float (B, C, H, W). The teacher is a constant (detached here), as in
    SSL4MIS ``train_mean_teacher_2D.py``. Returns a float scalar.
    """
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 4:
        raise DataError(
            "softmax_mse_consistency: student and teacher logits must both be (B, C, H, W), got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)} (run both networks on the same batch)"
        )
    diff = torch.softmax(student_logits, dim=1) - torch.softmax(teacher_logits.detach(), dim=1)
    return (diff * diff).mean()


def sigmoid_rampup(step: int | float, length: int | float) -> float:
    """Mean-teacher ramp-up (Laine & Aila 2017; Tarvainen & Valpola 2017): ``exp(-5 (1 - t)^2)``.

    ``t = clip(step / length, 0, 1)``; returns ``exp(-5) ~ 0.0067`` at step 0 and 1.0 from ``step >= length``.
    ``length == 0`` means no ramp-up (1.0 always). Host-side float arithmetic only.
    """
    if length < 0:
        raise ConfigError(f"sigmoid_rampup: length must be >= 0, got {length!r} (0 disables the ramp-up)")
    if length == 0:
        return 1.0
    t = min(max(float(step), 0.0), float(length)) / float(length)
    return math.exp(-5.0 * (1.0 - t) ** 2)
