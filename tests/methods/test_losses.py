"""Loss formulas against hand computations with plain Python floats (docs/shared.md, 'Supervised loss' and
docs/shared.md, 'Pseudo-label loss')."""

from __future__ import annotations

import math

import pytest
import torch

from methods.losses import (
    dice_loss,
    pseudo_label_loss,
    sigmoid_rampup,
    softmax_mse_consistency,
    supervised_loss,
)


def _softmax(values):
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


# logits[c][i][j] for a 1 x 2 x 2 x 2 example; target[i][j]
LOGITS = [[[2.0, -1.0], [0.5, 0.0]], [[0.0, 1.0], [-0.5, 3.0]]]
TARGET = [[0, 1], [1, 1]]


def _hand_supervised(weight):
    pixels = [(i, j) for i in range(2) for j in range(2)]
    probs = {p: _softmax([LOGITS[c][p[0]][p[1]] for c in range(2)]) for p in pixels}
    ce = sum(-math.log(probs[p][TARGET[p[0]][p[1]]]) for p in pixels) / len(pixels)
    dice_terms = []
    for c in range(2):
        y = {p: 1.0 if TARGET[p[0]][p[1]] == c else 0.0 for p in pixels}
        inter = sum(probs[p][c] * y[p] for p in pixels)
        p2 = sum(probs[p][c] ** 2 for p in pixels)
        y2 = sum(y[p] ** 2 for p in pixels)
        dice_terms.append(1.0 - (2 * inter + 1e-5) / (p2 + y2 + 1e-5))
    dice = sum(dice_terms) / 2
    return weight * (ce + dice), ce, dice


@pytest.mark.parametrize("weight", [1.0, 0.5])
def test_supervised_loss_matches_hand_computation(weight):
    logits = torch.tensor([LOGITS], dtype=torch.float64)
    target = torch.tensor([TARGET])
    total, terms = supervised_loss(logits, target, weight)
    expected_total, expected_ce, expected_dice = _hand_supervised(weight)
    assert total.item() == pytest.approx(expected_total, rel=1e-12)
    assert terms["ce"].item() == pytest.approx(expected_ce, rel=1e-12)
    assert terms["dice"].item() == pytest.approx(expected_dice, rel=1e-12)


def test_dice_is_batch_level_and_includes_background():
    # class 1 absent from image 0 but present in image 1: a per-image Dice would differ from the batch Dice
    logits = torch.zeros(2, 2, 1, 2)
    target = torch.tensor([[[0, 0]], [[1, 0]]])
    # p = 0.5 everywhere: class 0: inter 1.5, p2 1.0, y2 3; class 1: inter 0.5, p2 1.0, y2 1
    expected = ((1 - (3 + 1e-5) / (4 + 1e-5)) + (1 - (1 + 1e-5) / (2 + 1e-5))) / 2
    assert dice_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)
    # a perfect, confident prediction gives ~0
    perfect = torch.nn.functional.one_hot(target, 2).permute(0, 3, 1, 2).float() * 40
    assert dice_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-6)


def test_dice_of_bf16_logits_under_cpu_autocast_is_computed_in_float32():
    """The methods review: CPU autocast runs softmax in bf16, so the whole Dice ran in bf16, where a ratio near 1 moves
    in steps of about 0.004: a good prediction's loss read 0.0029 for 0.0040 (and exactly 0 nearer convergence)."""
    generator = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (8, 64, 64), generator=generator)
    onehot = torch.nn.functional.one_hot(target, 4).permute(0, 3, 1, 2).float()
    logits = (onehot * 4 + torch.randn(onehot.shape, generator=generator) * 0.5).to(torch.bfloat16)
    reference = dice_loss(logits.double(), target).item()  # the same bf16 logits, the formula in float64
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = dice_loss(logits, target)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(reference, rel=1e-4)


def test_supervised_loss_rejects_bad_shapes():
    with pytest.raises(ValueError, match="target"):
        supervised_loss(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="int64"):
        supervised_loss(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.int32))


def test_pseudo_label_loss_weighting_and_ignore():
    # B=2, C=2, 1 x 4 pixels.
    z = [
        [[0.3, -0.2], [1.0, 0.5], [0.0, 2.0], [100.0, -100.0]],  # image 0, per pixel (z0, z1)
        [[0.1, 0.4], [-1.0, 1.0], [0.2, 0.2], [2.0, 0.0]],  # image 1
    ]
    pseudo = [[0, 1, -1, 0], [1, 1, 0, 1]]
    conf = [[0.99, 0.50, 0.995, 0.98], [0.10, 0.20, 0.30, 0.40]]
    logits = torch.tensor(z, dtype=torch.float32).permute(0, 2, 1).unsqueeze(2)  # (2, 2, 1, 4)
    logits.requires_grad_(True)
    pseudo_t = torch.tensor(pseudo).unsqueeze(1)
    conf_t = torch.tensor(conf).unsqueeze(1)
    loss = pseudo_label_loss(logits, pseudo_t, conf_t, threshold=0.97)

    # hand computation: image 0 has 3 valid pixels, 2 of them confident (the ignored 0.995 does not count)
    weights = [2 / 3, 0 / 4]
    num, count = 0.0, 0
    for b in range(2):
        for p in range(4):
            if pseudo[b][p] == -1:
                continue
            ce = -math.log(_softmax(z[b][p])[pseudo[b][p]])
            if ce > 0:  # pixel 3 of image 0 has CE exactly 0 in float32: excluded from the mean
                num += weights[b] * ce
                count += 1
    assert count == 6
    assert loss.item() == pytest.approx(num / count, rel=1e-5)
    loss.backward()
    assert logits.grad[0].abs().sum() > 0
    assert torch.all(logits.grad[1] == 0)  # weight 0 image gets no gradient
    assert torch.all(logits.grad[0, :, :, 2] == 0)  # ignored pixel gets no gradient


def test_pseudo_label_loss_threshold_changes_weight():
    logits = torch.zeros(1, 2, 1, 2)
    pseudo = torch.tensor([[[0, 1]]])
    conf = torch.tensor([[[0.8, 0.99]]])
    # CE = log 2 at both pixels; weight = confident fraction
    assert pseudo_label_loss(logits, pseudo, conf, 0.97).item() == pytest.approx(0.5 * math.log(2), rel=1e-6)
    assert pseudo_label_loss(logits, pseudo, conf, 0.7).item() == pytest.approx(math.log(2), rel=1e-6)


def test_pseudo_label_loss_trains_unconfident_pixels_towards_the_teacher_with_the_confident_fraction():
    """The mechanism behind ACTION's background collapse at a short schedule (medseg_platform/profiles.py):
    a teacher that is confidently background on 95 of 100 pixels and unsure (but still background) on a
    5-pixel structure gives the image weight 0.95, and the unsure pixels are pulled towards background
    exactly as hard as the confident ones: nothing masks them out."""
    logits = torch.zeros(1, 2, 10, 10, requires_grad=True)  # an undecided student
    pseudo = torch.zeros(1, 10, 10, dtype=torch.int64)  # the teacher's argmax: background everywhere
    conf = torch.full((1, 10, 10), 0.99)
    conf[0, 4:5, 2:7] = 0.6  # the 5 unsure pixels (a thin foreground structure)
    loss = pseudo_label_loss(logits, pseudo, conf, 0.97)
    assert loss.item() == pytest.approx(0.95 * math.log(2), rel=1e-6)
    loss.backward()
    # d/dz_fg of w * CE / N = w * softmax_fg / N = 0.95 * 0.5 / 100 at every pixel, unsure ones included
    assert torch.allclose(logits.grad[0, 1], torch.full((10, 10), 0.95 * 0.5 / 100))
    assert torch.allclose(logits.grad[0, 0], torch.full((10, 10), -0.95 * 0.5 / 100))


def test_pseudo_label_loss_all_ignored_is_zero_not_nan():
    logits = torch.randn(2, 3, 2, 2, requires_grad=True)
    pseudo = torch.full((2, 2, 2), -1, dtype=torch.int64)
    loss = pseudo_label_loss(logits, pseudo, torch.ones(2, 2, 2))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_softmax_mse_consistency_hand_value_and_teacher_is_constant():
    student = torch.tensor([[[[0.0]], [[math.log(3.0)]]]], requires_grad=True)  # softmax (0.25, 0.75)
    teacher = torch.tensor([[[[0.0]], [[0.0]]]], requires_grad=True)  # softmax (0.5, 0.5)
    loss = softmax_mse_consistency(student, teacher)
    assert loss.item() == pytest.approx((0.25 ** 2 + 0.25 ** 2) / 2, rel=1e-6)
    loss.backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        softmax_mse_consistency(torch.zeros(1, 2, 2, 2), torch.zeros(1, 3, 2, 2))


def test_sigmoid_rampup_endpoints():
    assert sigmoid_rampup(0, 100) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(50, 100) == pytest.approx(math.exp(-1.25))
    assert sigmoid_rampup(100, 100) == 1.0
    assert sigmoid_rampup(250, 100) == 1.0
    assert sigmoid_rampup(-3, 100) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(0, 0) == 1.0
    with pytest.raises(ValueError):
        sigmoid_rampup(0, -1)
