"""Pixel-contrast building blocks and the class memory bank (docs/action.md, 'Anatomical contrast';
docs/mona.md, 'U2PL contrast' and docs/mona.md, 'Memory banks')."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from methods.contrast import (
    alpha_schedule,
    check_temperature,
    class_prototypes,
    entropy_percentile_masks,
    hard_query_mask,
    pixel_entropy,
    pixel_info_nce,
    relation_graph_probs,
    relation_negative_indices,
)
from methods.errors import ConfigError, DataError
from methods.memory_bank import ClassMemoryBank


# -- pixel_info_nce --------------------------------------------------------------------------------------

def _cos(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(y * y for y in b))
    return 0.0 if na == 0 or nb == 0 else dot / (na * nb)


def _hand_info_nce(anchors, positives, negatives, tau):
    losses = []
    for a, p, negs in zip(anchors, positives, negatives):
        pos = math.exp(_cos(a, p) / tau)
        losses.append(-math.log(pos / (pos + sum(math.exp(_cos(a, n) / tau) for n in negs))))
    return sum(losses) / len(losses)


def test_info_nce_hand_computed():
    anchors = [[1.0, 0.0], [0.0, 2.0]]
    positives = [[1.0, 1.0], [0.0, 1.0]]
    negatives = [[[-1.0, 0.0], [0.0, 3.0]], [[1.0, 0.0], [3.0, 4.0]]]
    tau = 0.5
    # cosines: anchor 1: pos 1/sqrt(2), negs -1, 0; anchor 2: pos 1, negs 0, 0.8
    l1 = -math.log(math.exp(math.sqrt(2)) / (math.exp(math.sqrt(2)) + math.exp(-2.0) + math.exp(0.0)))
    l2 = -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(0.0) + math.exp(1.6)))
    expected = (l1 + l2) / 2
    assert expected == pytest.approx(_hand_info_nce(anchors, positives, negatives, tau), abs=1e-12)
    got = pixel_info_nce(torch.tensor(anchors, dtype=torch.float64), torch.tensor(positives, dtype=torch.float64),
                         torch.tensor(negatives, dtype=torch.float64), tau)
    assert got.dim() == 0
    assert got.item() == pytest.approx(expected, abs=1e-12)
    per_anchor = pixel_info_nce(torch.tensor(anchors), torch.tensor(positives), torch.tensor(negatives), tau, reduction="none")
    assert per_anchor.tolist() == pytest.approx([l1, l2], abs=1e-6)
    summed = pixel_info_nce(torch.tensor(anchors), torch.tensor(positives), torch.tensor(negatives), tau, reduction="sum")
    assert summed.item() == pytest.approx(l1 + l2, abs=1e-5)


def _loop_reference(anchors, positive, negatives, tau):
    """Straightforward per-anchor loop (what the benchmark also uses)."""
    losses = []
    for k in range(anchors.shape[0]):
        pos = positive if positive.dim() == 1 else positive[k]
        keys = torch.cat([pos.unsqueeze(0), negatives[k]], 0)
        logits = F.cosine_similarity(anchors[k].unsqueeze(0), keys, dim=1) / tau
        losses.append(F.cross_entropy(logits.unsqueeze(0), torch.zeros(1, dtype=torch.long)))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("shared_positive", [True, False])
def test_info_nce_matches_loop_values_and_gradients(shared_positive):
    gen = torch.Generator().manual_seed(0)
    n, k, d, tau = 7, 5, 6, 0.3
    anchors = torch.randn(n, d, generator=gen, dtype=torch.float64)
    positive = torch.randn(d if shared_positive else (n, d), generator=gen, dtype=torch.float64)
    if not shared_positive:
        positive = positive.view(n, d)
    negatives = torch.randn(n, k, d, generator=gen, dtype=torch.float64)
    a1 = anchors.clone().requires_grad_(True)
    a2 = anchors.clone().requires_grad_(True)
    ours = pixel_info_nce(a1, positive, negatives, tau)
    ref = _loop_reference(a2, positive, negatives, tau)
    assert ours.item() == pytest.approx(ref.item(), abs=1e-10)
    (g1,) = torch.autograd.grad(ours, a1)
    (g2,) = torch.autograd.grad(ref, a2)
    assert torch.allclose(g1, g2, atol=1e-10)
    assert g1.abs().sum() > 0


def test_info_nce_one_row_positive_broadcasts():
    gen = torch.Generator().manual_seed(1)
    anchors, positive, negatives = torch.randn(4, 3, generator=gen), torch.randn(3, generator=gen), torch.randn(4, 2, 3, generator=gen)
    a = pixel_info_nce(anchors, positive, negatives, 0.5)
    b = pixel_info_nce(anchors, positive.unsqueeze(0), negatives, 0.5)
    c = pixel_info_nce(anchors, positive.expand(4, 3), negatives, 0.5)
    assert torch.allclose(a, b) and torch.allclose(a, c)


@pytest.mark.parametrize("bad", [0, 0.0, -0.5, float("nan"), float("inf"), True, "0.5"])
def test_info_nce_rejects_bad_temperature(bad):
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="temperature"):
        pixel_info_nce(x, x, torch.randn(2, 4, 3), bad)
    with pytest.raises(ValueError, match="temperature"):
        check_temperature(bad)


def test_info_nce_rejects_bad_shapes_and_reduction():
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="negatives"):
        pixel_info_nce(x, x, torch.randn(3, 4, 3), 0.5)
    with pytest.raises(ValueError, match="positive"):
        pixel_info_nce(x, torch.randn(3, 3), torch.randn(2, 4, 3), 0.5)
    with pytest.raises(ValueError, match="anchors"):
        pixel_info_nce(torch.randn(0, 3), torch.randn(3), torch.randn(0, 4, 3), 0.5)
    with pytest.raises(ValueError, match="reduction"):
        pixel_info_nce(x, x, torch.randn(2, 4, 3), 0.5, reduction="avg")


def test_info_nce_zero_vectors_have_cosine_zero():
    gen = torch.Generator().manual_seed(2)
    anchors = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    positive = torch.randn(4, generator=gen, dtype=torch.float64)
    k, tau = 6, 0.5
    loss = pixel_info_nce(anchors, positive, torch.zeros(3, k, 4, dtype=torch.float64), tau, reduction="none")
    for i in range(3):
        c = _cos(anchors[i].tolist(), positive.tolist())
        assert loss[i].item() == pytest.approx(-math.log(math.exp(c / tau) / (math.exp(c / tau) + k)), abs=1e-12)
    # all-zero positive and negatives: every logit 0 -> log(1 + K); finite, no NaN in the gradient either
    a = anchors.clone().requires_grad_(True)
    zero = pixel_info_nce(a, torch.zeros(4, dtype=torch.float64), torch.zeros(3, k, 4, dtype=torch.float64), tau)
    assert zero.item() == pytest.approx(math.log(1 + k), abs=1e-12)
    zero.backward()
    assert torch.isfinite(a.grad).all()


def test_info_nce_gradient_only_to_anchors_when_keys_detached():
    gen = torch.Generator().manual_seed(3)
    anchors = torch.randn(5, 4, generator=gen, requires_grad=True)
    source = torch.randn(5, 4, generator=gen, requires_grad=True)  # stands for a network output
    positive = (source * 2).mean(0)
    negatives = (source * 3).unsqueeze(1).expand(5, 3, 4)
    loss = pixel_info_nce(anchors, positive.detach(), negatives.detach(), 0.5)
    loss.backward()
    assert anchors.grad is not None and anchors.grad.abs().sum() > 0
    assert source.grad is None
    # and with attached keys the gradient does reach them
    loss2 = pixel_info_nce(anchors, positive, negatives, 0.5)
    loss2.backward()
    assert source.grad is not None and source.grad.abs().sum() > 0


def test_info_nce_lower_when_positive_is_closer():
    anchors = torch.tensor([[1.0, 0.0]])
    negatives = torch.tensor([[[0.0, 1.0], [-1.0, 0.2]]])
    near = pixel_info_nce(anchors, torch.tensor([1.0, 0.1]), negatives, 0.5)
    far = pixel_info_nce(anchors, torch.tensor([0.1, 1.0]), negatives, 0.5)
    assert near < far


# -- entropy masks and schedule ----------------------------------------------------------------------------

def _two_class_probs(p0: list[list[float]]) -> torch.Tensor:
    p = torch.tensor(p0, dtype=torch.float32).unsqueeze(0)  # (1, H, W)
    return torch.stack([p, 1 - p], dim=1)  # (1, 2, H, W)


def test_entropy_masks_hand_built():
    # entropy rises as p0 -> 0.5; ranks (0 = most confident) placed out of order on purpose
    p0 = [[0.80, 0.50, 1.00, 0.95, 0.60],
          [0.55, 0.99, 0.70, 0.90, 0.65]]
    probs = _two_class_probs(p0)
    low, high = entropy_percentile_masks(probs, 20.0)
    # 10 pixels: percentile 20 lies between ranks 1 and 2, percentile 80 between ranks 7 and 8
    expected_low = torch.tensor([[[False, False, True, False, False], [False, True, False, False, False]]])
    expected_high = torch.tensor([[[False, True, False, False, False], [True, False, False, False, False]]])
    assert low.dtype == torch.bool and low.shape == (1, 2, 5)
    assert torch.equal(low, expected_low)
    assert torch.equal(high, expected_high)
    # alpha = 0: only the single most / least certain pixel; alpha = 100: everything
    low0, high0 = entropy_percentile_masks(probs, 0)
    assert low0.sum() == 1 and low0[0, 0, 2] and high0.sum() == 1 and high0[0, 0, 1]
    low100, high100 = entropy_percentile_masks(probs, 100)
    assert low100.all() and high100.all()


def test_entropy_values_and_numpy_percentile_agree():
    gen = torch.Generator().manual_seed(4)
    probs = torch.softmax(torch.randn(2, 4, 7, 9, generator=gen) * 2, dim=1)
    h = pixel_entropy(probs)
    p = probs[0, :, 3, 4].tolist()
    assert h[0, 3, 4].item() == pytest.approx(-sum(x * math.log(x + 1e-10) for x in p), abs=1e-5)
    flat = h.flatten().double().numpy()
    for alpha in (3.7, 20.0, 50.0, 81.0):
        low, high = entropy_percentile_masks(probs, alpha)
        assert torch.equal(low, h <= torch.tensor(np.percentile(flat, alpha), dtype=torch.float32))
        assert torch.equal(high, h >= torch.tensor(np.percentile(flat, 100 - alpha), dtype=torch.float32))
        assert abs(low.float().mean().item() - alpha / 100) < 1.5 / h.numel() + 1e-6


def host_index_masks(probs: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The entropy masks as the platform computed them until 2026-12-06 (the percentile's ranks as Python indices, the
    lerp weight a Python float): the thresholds every earlier trial trained with, which the sync-free form must keep."""
    entropy = pixel_entropy(probs)
    ordered = entropy.flatten().sort().values

    def percentile(percent: float) -> torch.Tensor:
        position = percent / 100.0 * (ordered.shape[0] - 1)
        low = min(int(math.floor(position)), ordered.shape[0] - 1)
        lo, hi = ordered[low], ordered[min(low + 1, ordered.shape[0] - 1)]
        return torch.lerp(lo, hi, position - low).clamp(lo, hi)

    return entropy <= percentile(alpha), entropy >= percentile(100.0 - alpha)


def test_entropy_masks_over_valid_pixels_as_released():
    """With ``valid`` (the mixed pseudo-label is not ignored, e.g. outside a cutout box) the percentiles are taken over
    the valid pixels only and both masks are False elsewhere, as the release's ``np.percentile(entropy[label >= 0])``
    and its masks times ``label >= 0``; all pixels valid gives exactly the unmasked masks (CutMix: unchanged)."""
    gen = torch.Generator().manual_seed(11)
    for trial in range(200):
        probs = torch.softmax(torch.randn(3, 4, 6, 5, generator=gen) * 3, dim=1)
        if trial % 4 == 0:  # many ties
            probs = torch.softmax((torch.randn(3, 4, 6, 5, generator=gen) * 2).round(), dim=1)
        alpha = float(torch.rand((), generator=gen) * 100) if trial % 5 else float(trial % 101)
        everything = torch.ones(3, 6, 5, dtype=torch.bool)
        before = host_index_masks(probs, alpha)
        for masks in (entropy_percentile_masks(probs, alpha), entropy_percentile_masks(probs, alpha, everything)):
            assert torch.equal(masks[0], before[0]) and torch.equal(masks[1], before[1])
        valid = torch.rand(3, 6, 5, generator=gen) < 0.6
        valid[0, 0, 0] = True
        h = pixel_entropy(probs)
        kept = h[valid].double().numpy()
        low, high = entropy_percentile_masks(probs, alpha, valid)
        assert torch.equal(low, (h <= torch.tensor(np.percentile(kept, alpha), dtype=torch.float32)) & valid)
        assert torch.equal(high, (h >= torch.tensor(np.percentile(kept, 100 - alpha), dtype=torch.float32)) & valid)
    # the thresholds differ from the unmasked ones: a confident ignored box would pull the low threshold down
    probs = torch.softmax(torch.randn(1, 2, 4, 4, generator=gen), dim=1)
    probs[0, :, :2, :2] = torch.tensor([1.0, 0.0]).view(2, 1, 1)  # entropy 0 in the box
    box = torch.ones(1, 4, 4, dtype=torch.bool)
    box[0, :2, :2] = False
    low_all, _ = entropy_percentile_masks(probs, 20.0)
    low_valid, _ = entropy_percentile_masks(probs, 20.0, box)
    assert low_all[0, :2, :2].all() and low_all[box].sum() == 0  # unmasked: only the box is "reliable"
    assert not low_valid[0, :2, :2].any() and low_valid[box].sum() >= 2  # as released: the valid pixels' lowest 20%
    none = entropy_percentile_masks(probs, 20.0, torch.zeros(1, 4, 4, dtype=torch.bool))
    assert not none[0].any() and not none[1].any()
    single = torch.zeros(1, 4, 4, dtype=torch.bool)
    single[0, 3, 1] = True
    for alpha in (0.0, 20.0, 100.0):  # one valid pixel: it is both the reliable and the unreliable one
        low_one, high_one = entropy_percentile_masks(probs, alpha, single)
        assert torch.equal(low_one, single) and torch.equal(high_one, single)
    with pytest.raises(DataError, match="valid must be a bool"):
        entropy_percentile_masks(probs, 20.0, box.float())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_entropy_masks_equal_the_host_index_form_in_every_dtype(dtype):
    """The sync-free percentile interpolates in float32 at least, as ``torch.lerp`` with a Python weight does: with every
    pixel valid (or no mask) its masks equal the host-index form's under autocast's half precision too (the CPU's bf16
    softmax)."""
    gen = torch.Generator().manual_seed(5)
    for _ in range(300):
        probs = torch.softmax(torch.randn(2, 4, 7, 6, generator=gen) * 3, dim=1).to(dtype)
        alpha = float(torch.rand((), generator=gen) * 100)
        before = host_index_masks(probs, alpha)
        everything = torch.ones(2, 7, 6, dtype=torch.bool)
        for masks in (entropy_percentile_masks(probs, alpha), entropy_percentile_masks(probs, alpha, everything)):
            assert torch.equal(masks[0], before[0]) and torch.equal(masks[1], before[1])


@pytest.mark.parametrize("bad", [-1, 100.5, float("nan"), None])
def test_entropy_masks_reject_bad_alpha(bad):
    with pytest.raises(ValueError, match="alpha_percent"):
        entropy_percentile_masks(torch.full((1, 2, 2, 2), 0.5), bad)


def test_alpha_schedule():
    # released ACDC numbers: 30000 steps; here 100 steps per epoch -> E = 301
    assert alpha_schedule(0, 30000, 100) == 20.0
    assert alpha_schedule(99, 30000, 100) == 20.0
    assert alpha_schedule(100, 30000, 100) == pytest.approx(20 * (1 - 1 / 301))
    assert alpha_schedule(29999, 30000, 100) == pytest.approx(20 * 2 / 301)
    assert alpha_schedule(30000, 30000, 100) == pytest.approx(20 / 301)
    assert alpha_schedule(5, 10, 1, alpha0=10.0) == pytest.approx(10 * (1 - 5 / 11))
    for kwargs in ({"step": -1}, {"step": 30001}, {"steps_per_epoch": 0}, {"max_steps": 0}, {"alpha0": 120.0}):
        args = {"step": 0, "max_steps": 30000, "steps_per_epoch": 100, **kwargs}
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            alpha_schedule(**args)


# -- ACTION: hard queries, relation graph, negatives ---------------------------------------------------------

def test_hard_query_mask():
    prob = torch.tensor([0.5, 0.97, 0.99, 0.969, 1.0])
    assert hard_query_mask(prob).tolist() == [True, False, False, True, False]
    assert hard_query_mask(prob, threshold=0.6).tolist() == [True, False, False, False, False]
    with pytest.raises(ValueError, match="threshold"):
        hard_query_mask(prob, threshold=1.5)


def test_relation_graph_probs_hand_computed():
    protos = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    tau = 0.5
    probs, others = relation_graph_probs(protos, 0, tau, return_indices=True)
    assert others.tolist() == [1, 2, 3]
    cosines = [0.9 / math.sqrt(0.82), 0.0, -1.0]
    z = sum(math.exp(c / tau) for c in cosines)
    assert probs.tolist() == pytest.approx([math.exp(c / tau) / z for c in cosines], abs=1e-6)
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert int(probs.argmax()) == 0  # class 1, the most similar
    assert not probs.requires_grad
    probs2, others2 = relation_graph_probs(protos, 2, tau, return_indices=True)
    assert others2.tolist() == [0, 1, 3] and probs2.shape == (3,)
    assert torch.equal(relation_graph_probs(protos, 2, tau), probs2)
    # an absent class gets probability exactly 0; the rest renormalise
    present = torch.tensor([True, False, True, True])
    masked = relation_graph_probs(protos, 0, tau, present=present)
    assert masked[0].item() == 0.0
    z2 = math.exp(0.0) + math.exp(-1.0 / tau)
    assert masked[1:].tolist() == pytest.approx([1 / z2, math.exp(-2.0) / z2], abs=1e-6)


def test_relation_graph_probs_validation():
    protos = torch.randn(3, 4)
    with pytest.raises(ValueError, match="anchor_class"):
        relation_graph_probs(protos, 3, 0.5)
    with pytest.raises(ValueError, match="temperature"):
        relation_graph_probs(protos, 0, 0.0)
    with pytest.raises(ValueError, match="prototypes"):
        relation_graph_probs(torch.randn(1, 4), 0, 0.5)


def _pool_and_key(index, sizes):
    """Split indices into the concatenation of pools of ``sizes`` into (pool id, key within the pool)."""
    offsets = torch.tensor([0, *sizes]).cumsum(0)
    pool_id = torch.bucketize(index, offsets[1:], right=True)
    return pool_id, index - offsets[pool_id]


def test_relation_negative_indices_frequencies_and_membership():
    sizes, probs = [3, 5, 2], torch.tensor([0.2, 0.5, 0.3])
    index = relation_negative_indices(sizes, probs, 400, 100, generator=torch.Generator().manual_seed(5))
    assert index.shape == (400, 100) and index.dtype == torch.int64
    assert index.min() >= 0 and index.max() < sum(sizes)
    pool_id, key_id = _pool_and_key(index.flatten(), sizes)
    freq = torch.bincount(pool_id, minlength=3).double() / pool_id.numel()
    assert torch.allclose(freq, probs.double(), atol=0.01)  # 40 000 draws: 4 sigma ~ 0.01
    for j, n in enumerate(sizes):
        chosen = key_id[pool_id == j]
        assert chosen.min() >= 0 and chosen.max() < n
        within = torch.bincount(chosen, minlength=n).double() / chosen.numel()
        assert torch.allclose(within, torch.full((n,), 1.0 / n, dtype=torch.float64), atol=0.02)
    # the generator makes it reproducible
    again = relation_negative_indices(sizes, probs, 400, 100, generator=torch.Generator().manual_seed(5))
    assert torch.equal(index, again)


def test_relation_negative_indices_zero_probability_and_empty_pool():
    index = relation_negative_indices([3, 0, 2], torch.tensor([0.5, 0.0, 0.5]), 50, 20, generator=torch.Generator().manual_seed(6))
    pool_id, _ = _pool_and_key(index.flatten(), [3, 0, 2])
    assert set(pool_id.unique().tolist()) == {0, 2}
    idx = relation_negative_indices([3, 0, 2], torch.tensor([0.0, 0.0, 1.0]), 4, 8)
    assert idx.shape == (4, 8) and idx.dtype == torch.int64
    assert set(idx.unique().tolist()) <= {3, 4}  # offsets: pool 2 starts at 3


def test_relation_negative_indices_validation():
    with pytest.raises(ConfigError, match="num_anchors"):
        relation_negative_indices([3, 2], torch.tensor([0.5, 0.5]), 0, 2)
    with pytest.raises(ConfigError, match="num_negatives"):
        relation_negative_indices([3, 2], torch.tensor([0.5, 0.5]), 2, -1)
    with pytest.raises(DataError, match="class_probs"):
        relation_negative_indices([3, 2], torch.tensor([1.0]), 2, 2)


# -- prototypes ----------------------------------------------------------------------------------------------

def test_class_prototypes_hand_computed():
    reps = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0], [9.0, 10.0], [11.0, 12.0]], requires_grad=True)
    labels = torch.tensor([0, 0, 1, 2, 2, -1])
    valid = torch.tensor([True, True, True, False, True, True])
    protos, present = class_prototypes(reps, labels, valid, 4)
    assert protos.shape == (4, 2) and present.dtype == torch.bool
    assert protos.tolist() == [[2.0, 3.0], [5.0, 6.0], [9.0, 10.0], [0.0, 0.0]]
    assert present.tolist() == [True, True, True, False]
    protos.sum().backward()
    # d(sum of prototypes)/d rep = 1/count for the valid pixel's class, 0 for invalid / ignored pixels
    assert reps.grad[:, 0].tolist() == [0.5, 0.5, 1.0, 0.0, 1.0, 0.0]


def test_class_prototypes_feature_map_layout_matches_flat():
    gen = torch.Generator().manual_seed(7)
    reps = torch.randn(2, 5, 3, 4, generator=gen)
    labels = torch.randint(-1, 3, (2, 3, 4), generator=gen)
    valid = torch.rand(2, 3, 4, generator=gen) > 0.3
    protos, present = class_prototypes(reps, labels, valid, 4)
    flat = reps.permute(0, 2, 3, 1).reshape(-1, 5)
    protos2, present2 = class_prototypes(flat, labels.flatten(), valid.flatten(), 4)
    assert torch.allclose(protos, protos2, atol=1e-6) and torch.equal(present, present2)
    assert not present[3]
    with pytest.raises(ValueError, match="labels"):
        class_prototypes(flat, labels, valid.flatten(), 4)


# -- memory bank ---------------------------------------------------------------------------------------------

def _rows(start, count, dim=3):
    return torch.arange(start, start + count, dtype=torch.float32).unsqueeze(1).repeat(1, dim)


def test_bank_zero_init_survives_until_overflow():
    bank = ClassMemoryBank(2, 3, 5)
    assert bank.size(0) == 1 and torch.equal(bank.keys(0), torch.zeros(1, 3))
    bank.enqueue(0, _rows(1, 2))
    assert bank.keys(0)[:, 0].tolist() == [0, 1, 2]
    bank.enqueue(0, _rows(3, 2))  # exactly full: 1 + 4 = capacity, the zero key is still there
    assert bank.size(0) == 5 and bank.keys(0)[:, 0].tolist() == [0, 1, 2, 3, 4]
    bank.enqueue(0, _rows(5, 1))  # first overflow drops it
    assert bank.keys(0)[:, 0].tolist() == [1, 2, 3, 4, 5]
    assert bank.size(1) == 1  # other classes untouched


def test_bank_fifo_against_list_reference():
    gen = torch.Generator().manual_seed(8)
    for init in ("zero", "empty"):
        bank = ClassMemoryBank(2, 3, (7, 4), init=init)
        reference = [[0.0] if init == "zero" else [] for _ in range(2)]
        counter = 1.0
        for _ in range(25):
            c = int(torch.randint(0, 2, (1,), generator=gen))
            m = int(torch.randint(0, 10, (1,), generator=gen))
            bank.enqueue(c, _rows(counter, m))
            reference[c] = (reference[c] + [counter + i for i in range(m)])[-bank.capacity(c):]
            counter += m
            for k in range(2):
                assert bank.size(k) == len(reference[k])
                assert bank.keys(k)[:, 0].tolist() == reference[k]
                if reference[k]:
                    positions = torch.tensor([[0, len(reference[k]) - 1], [len(reference[k]) // 2, 0]])
                    assert torch.equal(bank.gather(k, positions), bank.keys(k)[positions])


def test_bank_gather_transient_equals_gather_and_reuses_one_growing_buffer():
    bank = ClassMemoryBank(2, 3, (7, 4), init="empty")
    bank.enqueue(0, _rows(1, 9))  # wrapped ring: the oldest key sits mid-storage
    bank.enqueue(1, _rows(50, 3))
    small, large = torch.tensor([[0, 6], [3, 1]]), torch.tensor([[2, 0, 1], [1, 1, 0]])
    first = bank.gather_transient(0, small)
    assert torch.equal(first, bank.gather(0, small)) and first.shape == (2, 2, 3)
    second = bank.gather_transient(1, large)  # larger: the buffer grows
    assert torch.equal(second, bank.gather(1, large))
    third = bank.gather_transient(0, small)  # smaller again: written into the front of the same buffer
    assert torch.equal(third, bank.gather(0, small))
    assert third.untyped_storage().data_ptr() == second.untyped_storage().data_ptr()
    bank.gather_transient(1, torch.tensor([[0, 0], [0, 0]]))
    assert not torch.equal(third, bank.gather(0, small))  # third is a view of the buffer: valid until the next call
    assert torch.equal(third, bank.gather(1, torch.tensor([[0, 0], [0, 0]])))
    assert "_scratch" not in str(bank.state_dict().keys())
    bank.double()
    assert bank.gather_transient(0, small).dtype == torch.float64  # follows the bank's dtype


def test_bank_overflow_in_one_call_keeps_newest():
    bank = ClassMemoryBank(1, 3, 4, init="empty")
    assert bank.size(0) == 0 and bank.keys(0).shape == (0, 3)
    bank.enqueue(0, _rows(1, 2))
    bank.enqueue(0, _rows(10, 9))
    assert bank.keys(0)[:, 0].tolist() == [15, 16, 17, 18]
    bank.enqueue(0, _rows(20, 0))
    assert bank.size(0) == 4


def test_bank_detaches_and_casts_keys():
    bank = ClassMemoryBank(1, 2, 3, init="empty")
    source = torch.ones(2, 2, dtype=torch.float64, requires_grad=True)
    bank.enqueue(0, source * 2)
    keys = bank.keys(0)
    assert keys.dtype == torch.float32 and not keys.requires_grad
    assert keys.tolist() == [[2.0, 2.0], [2.0, 2.0]]


def test_bank_counts_every_change_of_its_contents():
    bank = ClassMemoryBank(2, 3, (5, 3))
    assert bank.writes == 0
    bank.enqueue(0, _rows(1, 2))
    bank.enqueue(1, _rows(1, 0))  # no keys: nothing changed
    bank.gather(0, torch.tensor([0, 1])), bank.keys(0)  # reads change nothing
    assert bank.writes == 1
    bank.enqueue(1, _rows(1, 4))
    assert bank.writes == 2
    restored = ClassMemoryBank(2, 3, (5, 3))
    restored.load_state_dict(bank.state_dict())
    assert restored.writes == 1


def test_bank_state_dict_round_trip():
    bank = ClassMemoryBank(2, 3, (5, 3))
    bank.enqueue(0, _rows(1, 7))
    bank.enqueue(1, _rows(50, 2))
    state = bank.state_dict()
    assert {"bank_0", "bank_1", "pointer", "count"} <= set(state)
    restored = ClassMemoryBank(2, 3, (5, 3))
    restored.load_state_dict(state)
    for c in range(2):
        assert restored.size(c) == bank.size(c)
        assert torch.equal(restored.keys(c), bank.keys(c))
    # the write pointer came back too: both continue identically
    bank.enqueue(0, _rows(100, 2))
    restored.enqueue(0, _rows(100, 2))
    assert torch.equal(restored.keys(0), bank.keys(0))
    assert bank.keys(0)[:, 0].tolist() == [5, 6, 7, 100, 101]


def test_bank_validation():
    with pytest.raises(ValueError, match="capacities"):
        ClassMemoryBank(3, 4, (10, 10))
    with pytest.raises(ValueError, match="capacities"):
        ClassMemoryBank(2, 4, 0)
    with pytest.raises(ValueError, match="init"):
        ClassMemoryBank(2, 4, 10, init="random")
    with pytest.raises(ValueError, match="dim"):
        ClassMemoryBank(2, 0, 10)
    bank = ClassMemoryBank(2, 4, 10)
    with pytest.raises(ValueError, match="class_index"):
        bank.enqueue(2, torch.zeros(1, 4))
    with pytest.raises(ValueError, match="keys"):
        bank.enqueue(0, torch.zeros(1, 5))
    bad = bank.state_dict()
    bad["count"] = torch.tensor([11, 1])
    with pytest.raises(ValueError, match="count"):
        ClassMemoryBank(2, 4, 10).load_state_dict(bad)


def test_info_nce_prenormalised_negatives_flag():
    gen = torch.Generator().manual_seed(9)
    anchors, positive = torch.randn(4, 5, generator=gen, dtype=torch.float64), torch.randn(5, generator=gen, dtype=torch.float64)
    negatives = torch.randn(4, 3, 5, generator=gen, dtype=torch.float64)
    negatives[1, 2] = 0.0  # a zero key stays zero after normalisation
    unit = F.normalize(negatives, dim=-1)
    expected = pixel_info_nce(anchors, positive, negatives, 0.5)
    assert pixel_info_nce(anchors, positive, unit, 0.5, negatives_normalized=True).item() == pytest.approx(expected.item(), abs=1e-12)
    # the flag is a promise: with raw (non-unit) negatives the value differs
    assert pixel_info_nce(anchors, positive, negatives * 3, 0.5, negatives_normalized=True).item() != pytest.approx(expected.item(), abs=1e-3)


def test_info_nce_without_negatives_is_zero():
    loss = pixel_info_nce(torch.randn(3, 4), torch.randn(4), torch.randn(3, 0, 4), 0.5)
    assert loss.item() == 0.0  # -log(exp(s) / exp(s))


def test_entropy_masks_carry_no_graph_and_indices_accept_tensor_sizes():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    low, high = entropy_percentile_masks(torch.softmax(logits, 1), 25.0)
    assert not low.requires_grad and not high.requires_grad
    gen = torch.Generator().manual_seed(10)
    a = relation_negative_indices(torch.tensor([2, 3]), torch.tensor([0.5, 0.5]), 3, 4, generator=gen)
    b = relation_negative_indices([2, 3], torch.tensor([0.5, 0.5]), 3, 4, generator=torch.Generator().manual_seed(10))
    assert torch.equal(a, b) and a.min() >= 0 and a.max() < 5
