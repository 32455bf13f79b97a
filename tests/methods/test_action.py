"""ACTION stage iii fine-tuning: anatomical contrast (ReCo) and the objective (docs/action.md)."""

from __future__ import annotations

import copy
import math
from dataclasses import fields

import pytest
import torch

from tests.methods import synthetic

import methods.action as action
from methods.action import ActionConfig, ActionObjective, anatomical_contrast_loss
from methods.contrast import pixel_info_nce
from methods.errors import ConfigError, DataError
from methods.objective import Batch, IdentityStrongAugment, StrongView
from methods.registry import OBJECTIVES, build_model, build_objective, objective_config

TINY = dict(num_classes=2, channels=(4, 8, 8, 8, 8))
# small sizes, and thresholds a freshly initialised 2-class net actually crosses (so every term is non-zero)
SMALL = dict(num_queries=32, num_negatives=16, repr_dim=8, anco_weight=1.0, unsup_threshold=0.6,
             pseudo_valid_threshold=0.6, hard_query_threshold=0.9)


def _cos(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def _nce(anchor, positive, negatives, tau):
    pos = math.exp(_cos(anchor, positive) / tau)
    return -math.log(pos / (pos + sum(math.exp(_cos(anchor, n) / tau) for n in negatives)))


def _maps(vectors, shape):
    """(N*H*W, D) python rows in raster order -> (N, D, H, W) float64."""
    n, h, w = shape
    return torch.tensor(vectors, dtype=torch.float64).view(n, h, w, -1).permute(0, 3, 1, 2).contiguous()


# -- anatomical_contrast_loss --------------------------------------------------------------------------------

def test_anco_hand_computed_with_patched_draws(monkeypatch):
    # 3 classes, class 1 absent; 1 image of 1 x 4 pixels, 4-d representations, every pixel hard (P = 1/3)
    p = [[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0]]
    reps = _maps(p, (1, 1, 4)).requires_grad_(True)
    labels = torch.tensor([[[0, 0, 2, 2]]])
    valid = torch.ones(1, 1, 4, dtype=torch.bool)
    probs = torch.full((1, 3, 1, 4), 1 / 3, dtype=torch.float64)

    anchor_ranks = {0: torch.tensor([1, 0]), 2: torch.tensor([0, 1])}   # ranks in the class's hard pool
    concat = {0: torch.tensor([[0, 1], [1, 1]]), 2: torch.tensor([[1, 0], [0, 0]])}  # into the others' pools
    calls = []

    def fake_sample(num_candidates, num_samples, strategy, **kw):
        cls = [0, 2][len(calls)]
        calls.append((num_candidates, num_samples, strategy))
        return anchor_ranks[cls]

    seen = []

    def fake_negatives(sizes, class_probs, num_anchors, num_negatives, generator=None):
        cls = [0, 2][len(seen)]
        seen.append((torch.as_tensor(sizes).tolist(), class_probs.tolist(), num_anchors, num_negatives))
        return concat[cls]

    monkeypatch.setattr(action, "sample_indices", fake_sample)
    monkeypatch.setattr(action, "relation_negative_indices", fake_negatives)
    tau = 0.5
    loss, info = anatomical_contrast_loss(reps, labels, valid, probs, temperature=tau, num_queries=2, num_negatives=2)

    assert calls == [(2, 2, "uniform"), (2, 2, "uniform")]
    # other classes in increasing order; the absent class 1 has an empty pool and probability exactly 0
    assert [list(s[:2]) for s in seen] == [[[0, 2], [0.0, 1.0]], [[2, 0], [1.0, 0.0]]]
    assert [s[2:] for s in seen] == [(2, 2), (2, 2)]
    assert info["present"] == [0, 2] and info["contrasted"] == [0, 2]
    assert info["anchor_indices"][0].tolist() == [1, 0] and info["anchor_indices"][2].tolist() == [2, 3]
    assert info["negative_indices"][0].tolist() == [[2, 3], [3, 3]]
    assert info["negative_indices"][2].tolist() == [[1, 0], [0, 0]]

    mu0 = [(a + b) / 2 for a, b in zip(p[0], p[1])]
    mu2 = [(a + b) / 2 for a, b in zip(p[2], p[3])]
    l0 = (_nce(p[1], mu0, [p[2], p[3]], tau) + _nce(p[0], mu0, [p[3], p[3]], tau)) / 2
    l2 = (_nce(p[2], mu2, [p[1], p[0]], tau) + _nce(p[3], mu2, [p[0], p[0]], tau)) / 2
    assert loss.item() == pytest.approx((l0 + l2) / 2, abs=1e-12)  # two present classes

    # gradients reach the anchors only: prototypes and negative keys are constants (no-grad, as released)
    loss.backward()
    probe, const = reps.detach().clone().requires_grad_(True), reps.detach()
    mu0_t, mu2_t = torch.tensor(mu0, dtype=torch.float64), torch.tensor(mu2, dtype=torch.float64)
    reference = (
        pixel_info_nce(probe[0, :, 0, [1, 0]].t(), mu0_t, const[0, :, 0, [2, 3, 3, 3]].t().reshape(2, 2, 4), tau)
        + pixel_info_nce(probe[0, :, 0, [2, 3]].t(), mu2_t, const[0, :, 0, [1, 0, 0, 0]].t().reshape(2, 2, 4), tau)
    ) / 2
    reference.backward()
    assert reference.item() == pytest.approx(loss.item(), abs=1e-12)
    assert reps.grad.abs().sum().item() > 0
    assert torch.allclose(reps.grad, probe.grad, atol=1e-12)


def test_anco_zero_when_fewer_than_two_classes(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("nothing may be sampled")

    monkeypatch.setattr(action, "sample_indices", boom)
    reps = torch.randn(2, 4, 4, 4, requires_grad=True)
    probs = torch.full((2, 3, 4, 4), 1 / 3)
    labels = torch.ones(2, 4, 4, dtype=torch.int64)
    labels[1, 0, 0] = 2
    valid = torch.ones(2, 4, 4, dtype=torch.bool)
    valid[1, 0, 0] = False  # the only class-2 pixel is invalid -> one present class
    loss, info = anatomical_contrast_loss(reps, labels, valid, probs, num_queries=4, num_negatives=4)
    assert loss.item() == 0.0 and info["present"] == [1] and not info["anchor_indices"]
    labels[1, 0, 0] = -1  # ignore label: belongs to no class
    loss, info = anatomical_contrast_loss(reps, labels, torch.ones_like(valid), probs, num_queries=4, num_negatives=4)
    assert loss.item() == 0.0 and info["present"] == [1]


def test_hard_query_mask_restricts_anchors_and_skipped_class_counts_in_denominator():
    torch.manual_seed(0)
    n, h, w = 2, 6, 6
    labels = torch.arange(n * h * w).view(n, h, w) % 3                  # classes 0, 1, 2 interleaved
    probs = torch.full((n, 3, h, w), 0.5)
    own = probs.gather(1, labels.unsqueeze(1))                           # P_c at each pixel's own class
    easy = (torch.arange(n * h * w).view(n, h, w) // 3) % 2 == 0         # half of classes 0/1 confident
    own = torch.where(easy.unsqueeze(1), torch.full_like(own, 0.99), own)
    own[labels.unsqueeze(1) == 2] = 0.99                                 # class 2: no hard query at all
    probs = probs.scatter(1, labels.unsqueeze(1), own)
    valid = torch.ones(n, h, w, dtype=torch.bool)
    valid[0, 0, :] = False                                               # invalid pixels are never used
    reps = torch.randn(n, 5, h, w, requires_grad=True)

    loss, info = anatomical_contrast_loss(reps, labels, valid, probs, num_queries=64, num_negatives=32)
    assert info["present"] == [0, 1, 2] and info["contrasted"] == [0, 1]
    assert info["counts"][1][2] == 0
    flat_labels, flat_easy, flat_valid = labels.flatten(), easy.flatten(), valid.flatten()
    for c in (0, 1):
        anchors = info["anchor_indices"][c]
        assert (flat_labels[anchors] == c).all() and (~flat_easy[anchors]).all() and flat_valid[anchors].all()
        negatives = info["negative_indices"][c]
        assert (flat_labels[negatives] != c).all() and flat_valid[negatives].all()
    # the class without hard queries adds 0 but counts: mean over the 3 present classes
    per_class = info["per_class"]
    assert set(per_class) == {0, 1}
    assert loss.item() == pytest.approx((per_class[0] + per_class[1]).item() / 3, rel=1e-6)
    loss.backward()  # only anchor pixels receive gradient
    touched = reps.grad.abs().sum(1).flatten() > 0
    anchor_set = torch.zeros_like(touched)
    anchor_set[torch.cat([info["anchor_indices"][0], info["anchor_indices"][1]])] = True
    assert torch.equal(touched, anchor_set)

    # threshold 1.0: every valid pixel (P < 1) is a hard query, so easy pixels become anchors as well
    _, everything = anatomical_contrast_loss(reps, labels, valid, probs, hard_query_threshold=1.0,
                                             num_queries=256, num_negatives=4)
    assert everything["contrasted"] == [0, 1, 2]
    assert flat_easy[everything["anchor_indices"][0]].any()


def test_relation_graph_favours_the_most_similar_class():
    torch.manual_seed(0)
    n, h, w = 1, 6, 6
    labels = (torch.arange(h * w) % 3).view(n, h, w)
    centres = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [-1.0, 0.0, 0.2]])  # class 1 close to class 0
    reps = (centres[labels] + 0.01 * torch.randn(n, h, w, 3)).permute(0, 3, 1, 2).contiguous()
    probs = torch.full((n, 3, h, w), 0.5)
    valid = torch.ones(n, h, w, dtype=torch.bool)
    tau = 0.5
    _, info = anatomical_contrast_loss(reps, labels, valid, probs, temperature=tau, num_queries=64, num_negatives=128)

    mu = torch.stack([reps.permute(0, 2, 3, 1).reshape(-1, 3)[labels.flatten() == c].mean(0) for c in range(3)])
    cos = torch.nn.functional.cosine_similarity(mu[0:1], mu[1:], dim=1)
    expected = torch.softmax(cos / tau, 0)                                # π over classes 1, 2 for anchor class 0
    assert info["class_probs"][0][1:].tolist() == pytest.approx(expected.tolist(), abs=1e-5)
    assert info["class_probs"][0][0].item() == 0.0
    drawn = labels.flatten()[info["negative_indices"][0].flatten()]
    freq = torch.bincount(drawn, minlength=3).double() / drawn.numel()
    assert freq[0].item() == 0.0
    assert freq[1].item() > freq[2].item()
    assert freq[1:].tolist() == pytest.approx(expected.tolist(), abs=0.02)  # 8192 draws: 5 sigma ~ 0.02


def test_channels_last_representations_give_identical_results():
    torch.manual_seed(0)
    labels = torch.randint(0, 3, (2, 8, 8))
    probs = torch.softmax(torch.randn(2, 3, 8, 8), 1)
    valid = torch.rand(2, 8, 8) > 0.2
    base = torch.randn(2, 6, 8, 8)
    results = []
    for layout in (torch.contiguous_format, torch.channels_last):
        reps = base.clone(memory_format=layout).requires_grad_(True)
        assert reps.is_contiguous(memory_format=layout)
        torch.manual_seed(1)
        loss, info = anatomical_contrast_loss(reps, labels, valid, probs, num_queries=8, num_negatives=8)
        loss.backward()
        results.append((loss.detach(), info["negative_indices"], reps.grad.contiguous()))
    assert torch.equal(results[0][0], results[1][0]) and results[0][0].item() > 0
    assert all(torch.equal(results[0][1][c], results[1][1][c]) for c in results[0][1])
    assert torch.allclose(results[0][2], results[1][2], atol=1e-7)


def test_anchor_sampler_is_pluggable(monkeypatch):
    recorded = []
    real = action.sample_indices

    def spy(num_candidates, num_samples, strategy, **kw):
        recorded.append((num_candidates, num_samples, strategy, kw))
        return real(num_candidates, num_samples, strategy, **kw)

    monkeypatch.setattr(action, "sample_indices", spy)
    labels = (torch.arange(2 * 8 * 8) % 2).view(2, 8, 8)
    reps = torch.randn(2, 4, 8, 8)
    probs = torch.full((2, 2, 8, 8), 0.5)
    valid = torch.ones(2, 8, 8, dtype=torch.bool)
    _, info = anatomical_contrast_loss(reps, labels, valid, probs, num_queries=16, num_negatives=4,
                                       sampler="stratified_antithetic", sampler_groups=4,
                                       sampler_grouping="spatial", sampler_allocation="largest_remainder")
    assert [r[:3] for r in recorded] == [(64, 16, "stratified_antithetic")] * 2
    kw = recorded[0][3]
    assert (kw["groups"], kw["grouping"], kw["allocation"], kw["grid_shape"]) == (4, "spatial", "largest_remainder", (8, 8))
    # positions are the (row, col) of class 0's hard candidates, in raster order
    flat = torch.nonzero(labels.flatten() == 0).flatten() % 64
    assert torch.equal(kw["positions"], torch.stack([flat // 8, flat % 8], 1))
    for c in (0, 1):
        assert (labels.flatten()[info["anchor_indices"][c]] == c).all()


# -- the objective -------------------------------------------------------------------------------------------

def square_batch(generator: torch.Generator, b_l: int = 2, b_u: int = 2, size: int = 32, augment=None) -> Batch:
    return synthetic.square_batch(generator, b_l, b_u, size, augment)


def make(config: dict, seed: int = 0) -> ActionObjective:
    torch.manual_seed(seed)
    return build_objective("action", build_model("unet", **TINY), config)


def two_steps(config: dict) -> tuple[float, float]:
    """Total loss of step 0, then (after an SGD step and the EMA update) of step 1; all RNG seeded."""
    objective = make(config)
    objective.train()
    optimiser = torch.optim.SGD(objective.trainable_parameters(), lr=0.05)
    batch = square_batch(torch.Generator().manual_seed(3))
    torch.manual_seed(11)
    out = objective.loss(batch, 0, 10)
    out.total.backward()
    optimiser.step()
    objective.after_optimizer_step(0)
    torch.manual_seed(12)
    return out.total.item(), objective.loss(batch, 1, 10).total.item()


VARIATIONS = {
    "sup_weight": ({}, 1.0),
    "unsup_weight": ({}, 2.0),
    "anco_weight": ({}, 0.5),
    "unsup_threshold": ({}, 0.0),
    "hard_query_threshold": ({}, 0.6),
    "pseudo_valid_threshold": ({}, 0.0),
    "num_queries": ({}, 8),
    "num_negatives": ({}, 4),
    "temperature": ({}, 0.1),
    "repr_dim": ({}, 4),
    "sampler": ({}, "stratified"),
    "sampler_groups": ({"sampler": "stratified"}, 4),
    "sampler_grouping": ({"sampler": "stratified"}, "spatial"),
    "sampler_allocation": ({"sampler": "stratified", "sampler_grouping": "spatial"}, "largest_remainder"),
    "ema_momentum": ({}, 0.5),
    "double_ema": ({}, False),
    # the student's BN running statistics reach the loss through an eval-mode teacher (it copies them at the EMA
    # update), i.e. through its confidences: thresholds near 0.5 (2 classes) let small changes cross them
    "weak_bn_update": ({"teacher_bn_mode": "eval", "unsup_threshold": 0.51, "pseudo_valid_threshold": 0.51}, False),
    "teacher_bn_mode": ({}, "eval"),
}


def test_every_config_field_has_a_variation():
    # `representation` must NOT change anything: tests/methods/test_dense_equivalence.py holds it to that
    assert set(VARIATIONS) | {"representation"} == {f.name for f in fields(ActionConfig)}


@pytest.mark.parametrize("field", sorted(VARIATIONS))
def test_every_config_field_changes_the_loss(field):
    extra, value = VARIATIONS[field]
    base = {**SMALL, **extra}
    assert base.get(field, getattr(ActionConfig(), field)) != value
    reference = two_steps(base)
    changed = two_steps({**base, field: value})
    assert all(math.isfinite(v) for v in reference + changed)
    assert reference != changed, field


def test_terms_total_and_interface():
    objective = make(SMALL)
    assert objective.requires_unlabelled and objective.requires_strong_augment
    assert objective.eval_model() is objective.student
    assert objective.head is not None and objective.head.out_channels == 8
    trainable = {id(p) for p in objective.trainable_parameters()}
    assert trainable == {id(p) for p in objective.student.parameters()} | {id(p) for p in objective.head.parameters()}
    assert trainable.isdisjoint(id(p) for p in objective.teacher.parameters())
    out = objective.loss(square_batch(torch.Generator().manual_seed(0)), 0, 10)
    assert set(out.terms) == {"sup", "ce", "dice", "unsup", "anco"}
    assert all(not t.requires_grad for t in out.terms.values()) and out.total.requires_grad
    t = out.terms
    assert t["unsup"].item() > 0 and t["anco"].item() > 0
    assert torch.allclose(t["sup"], 0.5 * (t["ce"] + t["dice"]))
    assert torch.allclose(out.total.detach(), t["sup"] + t["unsup"] + 1.0 * t["anco"])


def test_defaults_are_as_released():
    cfg = ActionConfig()
    assert (cfg.sup_weight, cfg.unsup_weight, cfg.anco_weight) == (0.5, 1.0, 0.01)
    assert (cfg.unsup_threshold, cfg.hard_query_threshold, cfg.pseudo_valid_threshold) == (0.97, 0.97, 0.7)
    assert (cfg.num_queries, cfg.num_negatives, cfg.temperature, cfg.repr_dim) == (256, 512, 0.5, 512)
    assert (cfg.sampler, cfg.sampler_groups, cfg.sampler_grouping) == ("uniform", 16, "flat")
    assert (cfg.ema_momentum, cfg.double_ema, cfg.weak_bn_update, cfg.teacher_bn_mode) == (0.99, True, True, "train")
    assert OBJECTIVES["action"] is ActionObjective
    assert objective_config("action", {}) == cfg


def test_zero_weights_skip_their_terms(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("a removed term was computed")

    batch = square_batch(torch.Generator().manual_seed(0))
    monkeypatch.setattr(action, "anatomical_contrast_loss", boom)
    no_anco = make({**SMALL, "anco_weight": 0.0})
    assert no_anco.head is None and not any(k.startswith("head.") for k in no_anco.state_dict())
    out = no_anco.loss(batch, 0, 10)
    assert set(out.terms) == {"sup", "ce", "dice", "unsup"}
    assert torch.allclose(out.total.detach(), out.terms["sup"] + out.terms["unsup"])

    monkeypatch.undo()
    monkeypatch.setattr(action, "pseudo_label_loss", boom)
    no_unsup = make({**SMALL, "unsup_weight": 0.0})
    out = no_unsup.loss(batch, 0, 10)
    assert set(out.terms) == {"sup", "ce", "dice", "anco"}
    assert torch.allclose(out.total.detach(), out.terms["sup"] + out.terms["anco"])

    monkeypatch.setattr(action, "anatomical_contrast_loss", boom)
    neither = make({**SMALL, "unsup_weight": 0.0, "anco_weight": 0.0})
    monkeypatch.setattr(neither.teacher, "predict", boom)
    out = neither.loss(batch, 0, 10)
    assert set(out.terms) == {"sup", "ce", "dice"}


class RecordingAugment(IdentityStrongAugment):
    """Records what ``mix`` receives; ``perturb`` inverts the image (so the student's view is the strong one)."""

    def __init__(self):
        self.mixed = None

    def mix(self, image, pseudo_label, confidence):
        self.mixed = (image, pseudo_label, confidence)
        return StrongView(image, pseudo_label, confidence)

    def perturb(self, image):
        return 1.0 - image


def test_pseudo_labels_come_from_the_teacher_on_the_weak_view():
    objective = make({**SMALL, "teacher_bn_mode": "eval"})  # eval: deterministic teacher
    augment = RecordingAugment()
    batch = square_batch(torch.Generator().manual_seed(0), augment=augment)
    objective.loss(batch, 0, 10)
    image, pseudo, confidence = augment.mixed
    assert image is batch.unlabelled_image
    with torch.no_grad():
        probs = torch.softmax(objective.teacher.module.eval()(batch.unlabelled_image).logits, 1)
    assert torch.equal(pseudo, probs.argmax(1)) and torch.allclose(confidence, probs.max(1).values)


@pytest.mark.parametrize("double", [True, False])
def test_double_ema_moves_the_teacher_twice(double):
    m = 0.9
    objective = make({**SMALL, "ema_momentum": m, "double_ema": double})
    before = [p.detach().clone() for p in objective.teacher.module.parameters()]
    out = objective.loss(square_batch(torch.Generator().manual_seed(0)), 0, 10)
    out.total.backward()
    torch.optim.SGD(objective.trainable_parameters(), lr=0.5).step()
    objective.after_optimizer_step(0)
    decay = m * m if double else m
    moved = 0.0
    for t, t0, s in zip(objective.teacher.module.parameters(), before, objective.student.parameters()):
        assert torch.allclose(t, decay * t0 + (1 - decay) * s.detach(), atol=1e-6)
        moved += (t - t0).abs().sum().item()
    assert moved > 0


@pytest.mark.parametrize("weights", [{}, {"unsup_weight": 0.0, "anco_weight": 0.0}])
def test_weak_bn_update_moves_only_the_students_bn_statistics_on_the_weak_view(weights):
    batch = square_batch(torch.Generator().manual_seed(0))
    on, off = make({**SMALL, **weights}), make({**SMALL, **weights, "weak_bn_update": False})
    on.train(), off.train()
    torch.manual_seed(7)
    out_on = on.loss(batch, 0, 10)
    torch.manual_seed(7)
    out_off = off.loss(batch, 0, 10)
    # the loss and its gradient are those without the pass
    assert torch.equal(out_on.total, out_off.total)
    out_on.total.backward(), out_off.total.backward()
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(on.student.parameters(), off.student.parameters()))
    buffers = lambda o: [b for name, b in o.student.named_buffers() if "running" in name]  # noqa: E731
    assert not all(torch.equal(a, b) for a, b in zip(buffers(on), buffers(off)))
    # ... and the statistics are exactly one more train-mode pass of the student on the weak x_u, without gradient
    with torch.no_grad():
        off.student(batch.unlabelled_image)
    assert all(torch.equal(a, b) for a, b in zip(buffers(on), buffers(off)))
    assert all(torch.equal(a, b) for a, b in zip(on.teacher.state_dict().values(), off.teacher.state_dict().values()))


def test_state_dict_round_trip_resumes_exactly():
    objective = make(SMALL)
    optimiser = torch.optim.SGD(objective.trainable_parameters(), lr=0.05)
    batch = square_batch(torch.Generator().manual_seed(1))
    for step in range(2):
        out = objective.loss(batch, step, 10)
        optimiser.zero_grad()
        out.total.backward()
        optimiser.step()
        objective.after_optimizer_step(step)
    state = copy.deepcopy(objective.state_dict())
    for prefix in ("student.", "teacher.module.", "head."):
        assert any(k.startswith(prefix) for k in state), prefix
    restored = make(SMALL, seed=123)
    restored.load_state_dict(state)
    torch.manual_seed(5)
    a = objective.loss(batch, 2, 10).total
    torch.manual_seed(5)
    b = restored.loss(batch, 2, 10).total
    assert torch.equal(a, b)


def test_a_few_sgd_steps_lower_the_total_loss():
    objective = make({**SMALL, "anco_weight": 0.1})
    objective.train()
    optimiser = torch.optim.SGD(objective.trainable_parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(1)
    losses = []
    for step in range(16):
        out = objective.loss(square_batch(generator), step, 16)
        optimiser.zero_grad(set_to_none=True)
        out.total.backward()
        optimiser.step()
        objective.after_optimizer_step(step)
        losses.append(out.total.item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, losses


def test_anco_alone_trains_the_representation():
    """Labelled pixels only (pseudo_valid_threshold = 1) and the other terms negligible: L_anco must fall
    (the student and the head learn to separate the classes; with a random teacher's pseudo-labels it cannot)."""
    objective = make({**SMALL, "sup_weight": 1e-3, "unsup_weight": 0.0, "pseudo_valid_threshold": 1.0})
    objective.train()
    optimiser = torch.optim.SGD(objective.trainable_parameters(), lr=0.05, momentum=0.9)
    batch = square_batch(torch.Generator().manual_seed(1))
    losses = []
    for step in range(24):
        out = objective.loss(batch, step, 24)
        optimiser.zero_grad(set_to_none=True)
        out.total.backward()
        optimiser.step()
        objective.after_optimizer_step(step)
        losses.append(out.terms["anco"].item())
    assert sum(losses[-4:]) / 4 < 0.6 * losses[0], losses


def test_requires_a_pyramid_model_and_a_strong_augment():
    with pytest.raises(ConfigError, match="ActionObjective: the model lacks `pyramid_channels`"):
        ActionObjective(torch.nn.Conv2d(1, 2, 1))
    objective = make(SMALL)
    batch = square_batch(torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="strong_augment"):
        objective.loss(Batch(batch.labelled_image, batch.label, batch.unlabelled_image), 0, 10)


@pytest.mark.parametrize(
    "values, field",
    [
        ({"sup_weight": 0.0}, "sup_weight"),
        ({"unsup_weight": -1.0}, "unsup_weight"),
        ({"anco_weight": float("nan")}, "anco_weight"),
        ({"unsup_threshold": 1.5}, "unsup_threshold"),
        ({"hard_query_threshold": -0.1}, "hard_query_threshold"),
        ({"pseudo_valid_threshold": 2.0}, "pseudo_valid_threshold"),
        ({"num_queries": 0}, "num_queries"),
        ({"num_negatives": 2.5}, "num_negatives"),
        ({"temperature": 0.0}, "temperature"),
        ({"repr_dim": 0}, "repr_dim"),
        ({"sampler": "smc"}, "sampler"),
        ({"sampler_groups": 10}, "sampler_groups"),
        ({"sampler_grouping": "grid"}, "sampler_grouping"),
        ({"sampler_allocation": "round"}, "sampler_allocation"),
        ({"ema_momentum": 1.0}, "ema_momentum"),
        ({"double_ema": 1}, "double_ema"),
        ({"weak_bn_update": "yes"}, "weak_bn_update"),
        ({"teacher_bn_mode": "frozen"}, "teacher_bn_mode"),
    ],
)
def test_invalid_values_name_the_field(values, field):
    with pytest.raises(ConfigError, match=f"ActionConfig.{field}"):
        ActionConfig(**values)


@pytest.mark.parametrize("kwargs, message", [
    ({"reps": torch.zeros(1, 2, 2)}, "reps must be (N, D, H, W)"),
    ({"probs": torch.zeros(1, 2, 2, 3)}, "probs must be (N, C, H, W)"),
    ({"labels": torch.zeros(1, 2, 2, dtype=torch.int32)}, "labels must be int64"),
    ({"valid": torch.ones(1, 2, 3, dtype=torch.bool)}, "valid must be bool"),
])
def test_bad_contrast_inputs_are_data_errors(kwargs, message):
    args = {"reps": torch.zeros(1, 3, 2, 2), "labels": torch.zeros(1, 2, 2, dtype=torch.int64),
            "valid": torch.ones(1, 2, 2, dtype=torch.bool), "probs": torch.zeros(1, 2, 2, 2), **kwargs}
    with pytest.raises(DataError, match=r"anatomical_contrast_loss: " + message.replace("(", r"\(").replace(")", r"\)")):
        anatomical_contrast_loss(args.pop("reps"), args.pop("labels"), args.pop("valid"), args.pop("probs"))
