"""ISD relational distillation (methods/isd.py) and the ``isd_pretrain`` objective (docs/isd_pretraining.md)."""

from __future__ import annotations

import copy
import math
from dataclasses import fields

import pytest
import torch
import torch.nn.functional as F

from methods.isd import (
    ISDConfig,
    ISDRelationalKL,
    fifo_enqueue_,
    queue_kl,
    relational_kl,
    window_starts,
)
from methods.errors import ConfigError, DataError
from methods.isd_pretrain import PRESETS, ISDPretrainConfig, ISDPretrainObjective
from methods.objective import Batch, IdentityStrongAugment
from methods.registry import OBJECTIVES, build_model, build_objective, objective_config

TINY = dict(num_classes=4, channels=(4, 8, 8, 8, 8))
# 64x64 patches; window 16 / stride 8 gives the released 6x6 ("action") or 7x7 ("mona") window grid.
SMALL = dict(image_size=64, window=16, stride=8, pool_size=4, latent_dim=16, queue_size=12)


class GammaView(IdentityStrongAugment):
    """Deterministic pretraining views: "jittered" = ``scale x``, teacher view = ``(scale x)^gamma`` (non-affine, so
    the two views differ); ``coins`` records what the objective asked for. ``GammaView(1.0, 1.0)``: three equal views."""

    def __init__(self, scale: float = 0.9, gamma: float = 2.0):
        self.scale, self.gamma, self.coins = scale, gamma, []

    def pretrain_views(self, image: torch.Tensor, coins: str) -> tuple[torch.Tensor, torch.Tensor]:
        self.coins.append(coins)
        jittered = image * self.scale
        return jittered, jittered ** self.gamma


def shapes_batch(generator: torch.Generator, b_l: int = 3, b_u: int = 3, size: int = 64, augment=None) -> Batch:
    """Noisy images with three rectangles of classes 1..3 (brightness 0.3/0.6/0.9), background 0."""

    def images(n):
        image = torch.rand(n, 1, size, size, generator=generator) * 0.2
        label = torch.zeros(n, size, size, dtype=torch.int64)
        for i in range(n):
            for cls in (1, 2, 3):
                side = int(torch.randint(size // 8, size // 3, (1,), generator=generator))
                top, left = (int(v) for v in torch.randint(0, size - side, (2,), generator=generator))
                image[i, 0, top:top + side, left:left + side] = 0.3 * cls + 0.1 * image[i, 0, top:top + side, left:left + side]
                label[i, top:top + side, left:left + side] = cls
        return image, label

    labelled, label = images(b_l)
    unlabelled, _ = images(b_u)
    return Batch(labelled, label, unlabelled, augment if augment is not None else GammaView())


def make(config: dict | None = None, seed: int = 0, dropout=None) -> ISDPretrainObjective:
    torch.manual_seed(seed)
    model_kwargs = dict(TINY) if dropout is None else dict(TINY, dropout=dropout)
    return build_objective("isd_pretrain", build_model("unet", **model_kwargs), {**SMALL, **(config or {})})


def run(objective: ISDPretrainObjective, steps: int = 2, lr: float = 0.01, size: int = 64) -> list[dict[str, float]]:
    """``steps`` SGD steps on fixed synthetic batches; returns the logged terms of each step."""
    generator = torch.Generator().manual_seed(1)
    optimiser = torch.optim.SGD(objective.trainable_parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    objective.train()
    history = []
    torch.manual_seed(2)  # dropout masks
    for step in range(steps):
        out = objective.loss(shapes_batch(generator, size=size), step, steps)
        optimiser.zero_grad(set_to_none=True)
        out.total.backward()
        optimiser.step()
        objective.after_optimizer_step(step)
        history.append({k: float(v) for k, v in out.terms.items()})
    return history


def trainable_names(objective) -> set[str]:
    return {name for name, p in objective.named_parameters() if p.requires_grad}


# --------------------------------------------------------------------------- pure functions


def test_window_starts_released_grids_and_generalisation():
    assert list(window_starts(256, 64, 32, "action")) == [0, 32, 64, 96, 128, 160]  # C: 6x6 = 36
    assert list(window_starts(256, 64, 32, "mona")) == [0, 32, 64, 96, 128, 160, 192]  # M: 7x7 = 49
    assert len(window_starts(64, 16, 8, "action")) == 6 and len(window_starts(64, 16, 8, "mona")) == 7
    # when the last window does not end on the border both layouts agree
    assert list(window_starts(64, 20, 8, "action")) == list(window_starts(64, 20, 8, "mona")) == [0, 8, 16, 24, 32, 40]
    assert list(window_starts(64, 64, 8, "action")) == [] and list(window_starts(64, 64, 8, "mona")) == [0]


def test_global_kl_matches_a_hand_computation():
    student = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    teacher = torch.tensor([[0.0, 2.0], [1.0, 1.0]])
    queue = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 1.0]])
    tau_s, tau_t = 0.5, 0.25

    def unit(v):
        n = math.hypot(*v)
        return [x / n for x in v]

    def softmax(xs):
        m = max(xs)
        e = [math.exp(x - m) for x in xs]
        return [x / sum(e) for x in e]

    q_rows = [unit(q) for q in queue.tolist()]
    expected = 0.0
    for s, t in zip(student.tolist(), teacher.tolist()):
        s, t = unit(s), unit(t)
        log_q = [math.log(p) for p in softmax([(s[0] * q[0] + s[1] * q[1]) / tau_s for q in q_rows])]
        p_t = softmax([(t[0] * q[0] + t[1] * q[1]) / tau_t for q in q_rows])
        expected += sum(p * (math.log(p) - lq) for p, lq in zip(p_t, log_q))
    expected /= 2  # batchmean over the 2 samples

    value = queue_kl(student, teacher, queue, tau_s, tau_t)
    assert value.item() == pytest.approx(expected, rel=1e-5)
    # the released formulation: F.kl_div(log_softmax(student), softmax(teacher), "batchmean")
    s_logits = F.normalize(student, dim=1) @ F.normalize(queue, dim=1).t() / tau_s
    t_logits = F.normalize(teacher, dim=1) @ F.normalize(queue, dim=1).t() / tau_t
    reference = F.kl_div(F.log_softmax(s_logits, 1), F.softmax(t_logits, 1), reduction="batchmean")
    assert value.item() == pytest.approx(reference.item(), rel=1e-5)
    assert expected > 0.1  # a non-trivial example


def test_relational_kl_gradient_is_finite_where_the_teacher_softmax_underflows():
    torch.manual_seed(0)
    student = torch.randn(4, 9, requires_grad=True)
    teacher = (torch.randn(4, 9) * 300).requires_grad_()  # cosine/0.01-like spread: exp underflows to 0
    assert (torch.softmax(teacher, 1) == 0).any()
    value = relational_kl(student, teacher)
    value.backward()
    reference = F.kl_div(F.log_softmax(student, 1), F.softmax(teacher, 1), reduction="batchmean")
    assert value.item() == pytest.approx(reference.item(), rel=1e-5)
    assert torch.isfinite(teacher.grad).all() and torch.isfinite(student.grad).all()
    # analytic gradient wrt the teacher logits: p (a - sum p a) / N with a = log p - log q
    p = torch.softmax(teacher.detach(), 1)
    a = torch.log_softmax(teacher.detach(), 1) - torch.log_softmax(student.detach(), 1)
    expected = p * (a - (p * a).sum(1, keepdim=True)) / 4
    assert torch.allclose(teacher.grad, expected, atol=1e-6)


def test_fifo_enqueue_replaces_the_oldest_rows():
    queue, pointer = torch.zeros(6, 2), torch.zeros((), dtype=torch.long)
    batches = [torch.full((3, 2), float(i + 1)) for i in range(3)]
    fifo_enqueue_(queue, pointer, batches[0])
    assert pointer.item() == 3 and queue[:3].eq(1).all() and queue[3:].eq(0).all()
    fifo_enqueue_(queue, pointer, batches[1])
    assert pointer.item() == 0 and queue[3:].eq(2).all()
    fifo_enqueue_(queue, pointer, batches[2])
    assert pointer.item() == 3 and queue[:3].eq(3).all() and queue[3:].eq(2).all()
    with pytest.raises(ConfigError, match="queue_size"):
        fifo_enqueue_(queue, pointer, torch.zeros(4, 2))


# --------------------------------------------------------------------------- the relational module


def module(layout: str, seed: int = 0, **overrides) -> ISDRelationalKL:
    torch.manual_seed(seed)
    cfg = dict(image_size=64, window=16, stride=8, pool_size=8, latent_dim=16, queue_size=36, local_layout=layout)
    return ISDRelationalKL(4, 8, ISDConfig(**{**cfg, **overrides}))


def test_local_layouts_shapes_and_values_differ():
    torch.manual_seed(1)
    z_s, z_t = torch.randn(6, 4, 64, 64), torch.randn(6, 4, 64, 64)
    coded, per_patch = module("as_coded_reshape"), module("per_patch")
    assert coded.num_windows == 36 and coded.local_queue.shape == (36, 36, 256)
    a, b = coded.local_term(z_s, z_t), per_patch.local_term(z_s, z_t)
    # docs/methods.md "ISD pretraining": for C=4, B=6, K=36, P=36 the as-coded logits are 1536 x 9216 (never materialised
    # by local_term, which returns None for them; local_logits builds them)
    assert a.student_logits is None and a.teacher_logits is None
    assert all(x.shape == (1536, 9216) for x in coded.local_logits(z_s, z_t))
    assert b.student_logits.shape == b.teacher_logits.shape == (6 * 36, 36)
    assert all(torch.equal(x, y) for x, y in zip(per_patch.local_logits(z_s, z_t), (b.student_logits, b.teacher_logits)))
    assert a.keys.shape == b.keys.shape == (6, 36, 256)
    assert torch.equal(coded.local_queue, per_patch.local_queue)  # same init, so only the layout differs
    assert not torch.allclose(a.loss, b.loss)
    assert not torch.equal(a.keys, b.keys)


def window_major_embeddings(head, z, starts, window):
    """Reference from docs/isd_pretraining.md: loop over windows (rows outer), stack window-major."""
    out = []
    for i in starts:
        for j in starts:
            out.append(head(z[:, :, i:i + window, j:j + window]))
    return torch.cat(out)  # (P*B, C, pool, pool)


def test_as_coded_reshape_matches_a_loop_reference():
    isd = module("as_coded_reshape", pool_size=4)  # 36 chunks of 36 scalars straddle the 64-scalar windows
    torch.manual_seed(3)
    z_s, z_t = torch.randn(6, 4, 64, 64), torch.randn(6, 4, 64, 64)
    term = isd.local_term(z_s, z_t)
    p, starts = 36, list(range(0, 48, 8))
    student = window_major_embeddings(lambda w: isd.student_local_predictor(isd.student_local_head(w)), z_s, starts, 16)
    teacher = window_major_embeddings(isd.teacher_local_head, z_t, starts, 16)
    queue = isd.local_queue.transpose(0, 1).reshape(-1, p)
    s = F.normalize(student.reshape(-1, p), dim=1) @ F.normalize(queue, dim=1).t() / 0.1
    t = F.normalize(teacher.reshape(-1, p), dim=1) @ F.normalize(queue, dim=1).t() / 0.01
    expected = F.kl_div(F.log_softmax(s, 1), F.softmax(t, 1), reduction="batchmean")
    assert term.loss.item() == pytest.approx(expected.item(), rel=1e-4)
    assert torch.allclose(term.keys, teacher.detach().reshape(6, p, -1), atol=1e-6)


def test_per_patch_matches_a_loop_reference():
    isd = module("per_patch")
    torch.manual_seed(4)
    z_s, z_t = torch.randn(6, 4, 64, 64), torch.randn(6, 4, 64, 64)
    term = isd.local_term(z_s, z_t)
    starts, total = list(range(0, 48, 8)), 0.0
    for b in range(6):
        for p, (i, j) in enumerate((i, j) for i in starts for j in starts):
            s = isd.student_local_predictor(isd.student_local_head(z_s[b:b + 1, :, i:i + 16, j:j + 16])).flatten()
            t = isd.teacher_local_head(z_t[b:b + 1, :, i:i + 16, j:j + 16]).flatten()
            assert torch.allclose(term.keys[b, p], t, atol=1e-6)
            total += queue_kl(s[None], t[None], isd.local_queue[:, p], 0.1, 0.01)
    assert term.loss.item() == pytest.approx(total.item() / (6 * 36), rel=1e-4)


def test_module_enqueue_global_and_local_fifo():
    isd = module("per_patch", queue_size=12)
    torch.manual_seed(5)
    keys = []
    for n in range(3):
        g = isd.global_term(torch.randn(6, 8, 4, 4), torch.randn(6, 8, 4, 4))
        loc = isd.local_term(torch.randn(6, 4, 64, 64), torch.randn(6, 4, 64, 64))
        isd.enqueue(g.keys, loc.keys)
        keys.append((g.keys, loc.keys))
    assert isd.global_queue_ptr.item() == 6 and isd.local_queue_ptr.item() == 6
    assert torch.equal(isd.global_queue[:6], keys[2][0]) and torch.equal(isd.global_queue[6:], keys[1][0])
    assert torch.equal(isd.local_queue[:6], keys[2][1]) and torch.equal(isd.local_queue[6:], keys[1][1])
    assert not keys[2][0].requires_grad and not isd.global_queue.requires_grad


def test_invalid_isd_config_values_name_the_field():
    with pytest.raises(ConfigError, match="ISDConfig.tau_teacher"):
        ISDConfig(tau_teacher=0.0)
    with pytest.raises(ConfigError, match="ISDConfig.window"):
        ISDConfig(image_size=64, window=64)  # "action" excludes the only start
    assert ISDConfig(image_size=64, window=64, local_windows="mona").window == 64


# --------------------------------------------------------------------------- the objective


def test_registry_presets_and_interface():
    assert OBJECTIVES["isd_pretrain"] is ISDPretrainObjective
    assert ISDPretrainObjective.requires_unlabelled and ISDPretrainObjective.requires_strong_augment
    stage_i = objective_config("isd_pretrain", PRESETS["action_stage_i"])
    assert not stage_i.train_decoder and stage_i.local_weight == stage_i.sup_weight == 0
    assert objective_config("isd_pretrain", PRESETS["action_stage_ii"]) == ISDPretrainConfig()
    mona = objective_config("isd_pretrain", PRESETS["mona"])
    assert ISDPretrainObjective(build_model("unet", **TINY), mona).isd.num_windows == 49
    assert ISDPretrainObjective(build_model("unet", **TINY)).isd.num_windows == 36
    default = ISDPretrainConfig()
    assert (default.latent_dim, default.queue_size, default.tau_student, default.tau_teacher) == (512, 36, 0.1, 0.01)

    objective = make()
    assert objective.eval_model() is objective.student
    out = objective.loss(shapes_batch(torch.Generator().manual_seed(0)), 0, 10)
    assert set(out.terms) == {"sup", "ce", "dice", "global", "local", "total"}
    assert all(not t.requires_grad for t in out.terms.values()) and out.total.requires_grad
    expected = out.terms["sup"] + out.terms["global"] + out.terms["local"]
    assert torch.allclose(out.total.detach(), expected) and torch.equal(out.terms["total"], out.total.detach())
    assert torch.allclose(out.terms["sup"], 0.5 * (out.terms["ce"] + out.terms["dice"]))
    batch = shapes_batch(torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="strong_augment"):
        objective.loss(Batch(batch.labelled_image, batch.label, batch.unlabelled_image), 0, 10)
    with pytest.raises(DataError, match="ISDPretrainConfig.image_size: 64, but the batch holds"):
        objective.loss(shapes_batch(torch.Generator().manual_seed(0), size=48), 0, 10)
    state = copy.deepcopy(objective.state_dict())
    with pytest.raises(ConfigError, match="ISDPretrainConfig.queue_size: 12 is not a multiple"):  # K=12, batch 4 + 3
        objective.loss(shapes_batch(torch.Generator().manual_seed(0), b_l=4), 0, 10)
    for key, value in objective.state_dict().items():  # rejected before the EMA update and the enqueue
        assert torch.equal(value, state[key]), key


def test_teacher_ema_happens_once_per_step_before_the_teacher_pass():
    objective = make({"ema_momentum": 0.9}, dropout=(0.0,) * 5)
    with torch.no_grad():
        for p in objective.student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    t0 = [p.clone() for p in objective.teacher.module.parameters()]
    s0 = [p.clone() for p in objective.student.parameters()]
    heads0 = [p.clone() for p in objective.isd.teacher_projector.parameters()]
    objective.train()
    objective.loss(shapes_batch(torch.Generator().manual_seed(0), augment=GammaView(1.0, 1.0)), 0, 10)
    for t, a, b in zip(objective.teacher.module.parameters(), t0, s0):
        assert torch.allclose(t, 0.9 * a + 0.1 * b, atol=1e-6)
    for h, h0 in zip(objective.isd.teacher_projector.parameters(), heads0):  # no head EMA for ACTION
        assert torch.equal(h, h0)
    after = [p.clone() for p in objective.teacher.module.parameters()]
    objective.after_optimizer_step(0)
    assert all(torch.equal(a, b) for a, b in zip(after, objective.teacher.module.parameters()))

    # order: with m = 0 the teacher equals the student *before* its pass, so (same view, no dropout)
    # the enqueued local keys are the teacher head applied to the student's own logits.
    objective = make({"ema_momentum": 0.0, "local_layout": "per_patch"}, dropout=(0.0,) * 5)
    with torch.no_grad():
        for p in objective.student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = shapes_batch(torch.Generator().manual_seed(0), augment=GammaView(1.0, 1.0))
    objective.train()
    objective.loss(batch, 0, 10)
    with torch.no_grad():
        z = objective.student(torch.cat([batch.labelled_image, batch.unlabelled_image])).logits
        keys = objective.isd.teacher_local_head(objective.isd.windows(z)).reshape(36, 6, -1).transpose(0, 1)
    assert torch.allclose(objective.isd.local_queue[:6], keys, atol=1e-5)


def test_mona_teacher_head_ema():
    objective = make({"teacher_head_ema": True, "ema_momentum": 0.9})
    t0 = [p.clone() for p in objective.isd.teacher_local_head.parameters()]
    s0 = [p.clone() for p in objective.isd.student_local_head.parameters()]
    objective.loss(shapes_batch(torch.Generator().manual_seed(0)), 0, 10)
    for t, a, b in zip(objective.isd.teacher_local_head.parameters(), t0, s0):
        assert torch.allclose(t, 0.9 * a + 0.1 * b, atol=1e-6)


@pytest.mark.parametrize("mode", ["as_released", "stop_gradient"])
def test_teacher_head_gradient(mode):
    objective = make({"teacher_head_grad": mode})
    objective.loss(shapes_batch(torch.Generator().manual_seed(0)), 0, 10).total.backward()
    heads = list(objective.isd.teacher_projector.parameters()) + list(objective.isd.teacher_local_head.parameters())
    trainable = {id(p) for p in objective.trainable_parameters()}
    if mode == "as_released":
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in heads)
        assert all(id(p) in trainable for p in heads)
    else:
        assert all(p.grad is None for p in heads)
        assert not any(id(p) in trainable for p in heads)
    assert all(p.grad is None for p in objective.teacher.parameters())
    assert {id(p) for p in objective.teacher.parameters()}.isdisjoint(trainable)


def test_stage_i_freezes_the_decoder_and_trains_the_encoder():
    objective = make(PRESETS["action_stage_i"])
    student = objective.student
    frozen = list(student.decoder.parameters()) + list(student.head.parameters())
    assert all(not p.requires_grad for p in frozen)
    trainable = {id(p) for p in objective.trainable_parameters()}
    assert not any(id(p) in trainable for p in frozen)
    assert all(id(p) in trainable for p in student.encoder.parameters())
    before_dec = [p.clone() for p in frozen]
    before_enc = [p.clone() for p in student.encoder.parameters()]
    history = run(objective, steps=2)
    assert history[0]["sup"] == 0.0 and history[0]["local"] > 0  # logged, not trained
    assert all(torch.equal(a, b) for a, b in zip(before_dec, frozen))
    assert any(not torch.equal(a, b) for a, b in zip(before_enc, student.encoder.parameters()))


# one alternative value per config field: each must change the loss or the trained parameter set
FIELD_CHANGES = [
    ("latent_dim", {}, 32, "loss"),
    ("queue_size", {}, 6, "loss"),
    ("tau_student", {}, 0.2, "loss"),
    ("tau_teacher", {}, 0.05, "loss"),
    ("ema_momentum", {}, 0.5, "loss"),
    ("global_weight", {}, 2.0, "loss"),
    ("local_weight", {}, 0.5, "loss"),
    ("sup_weight", {}, 1.0, "loss"),
    ("image_size", {}, 48, "loss"),
    ("window", {}, 24, "loss"),
    ("stride", {}, 16, "loss"),
    ("local_windows", {}, "mona", "loss"),
    ("local_layout", {}, "per_patch", "loss"),
    ("pool_size", {}, 2, "loss"),
    ("train_encoder", {}, False, "trainable"),
    ("train_decoder", {"local_weight": 0.0, "sup_weight": 0.0}, False, "trainable"),
    ("teacher_head_grad", {}, "stop_gradient", "trainable"),
    ("teacher_head_ema", {}, True, "loss"),
    ("teacher_view", {}, "student_strong", "loss"),
    ("view_coins", {}, "per_image", "loss"),
]


def test_field_changes_cover_every_config_field():
    assert [f for f, *_ in FIELD_CHANGES] == [f.name for f in fields(ISDPretrainConfig)]


@pytest.mark.parametrize("field, base, value, effect", FIELD_CHANGES, ids=[f for f, *_ in FIELD_CHANGES])
def test_every_config_field_changes_the_loss_or_what_is_trained(field, base, value, effect):
    reference, changed = make(base), make({**base, field: value})
    assert getattr(changed.config, field) == value != getattr(reference.config, field)
    if effect == "trainable":
        assert trainable_names(reference) != trainable_names(changed)
        return
    # each objective sees patches of its own image_size (for that field the local window grid changes too)
    a, b = run(reference, size=reference.config.image_size), run(changed, size=changed.config.image_size)
    if field == "image_size":
        assert (reference.isd.num_windows, changed.isd.num_windows) == (36, 16)
    totals_a, totals_b = [h["total"] for h in a], [h["total"] for h in b]
    assert all(math.isfinite(v) for v in totals_a + totals_b)
    assert totals_a != pytest.approx(totals_b, rel=1e-6, abs=1e-9), (totals_a, totals_b)


@pytest.mark.parametrize("coins, teacher_view, student_sees, teacher_sees", [
    ("per_batch", "teacher_strong", "jittered", "view"),   # as released: the jitter reaches the student too
    ("per_image", "teacher_strong", "image", "view"),
    ("per_batch", "student_strong", "view", "jittered"),
    ("per_image", "student_strong", "view", "image"),
])
def test_view_coins_choose_the_views_and_reach_the_augment(coins, teacher_view, student_sees, teacher_sees):
    objective = make({"view_coins": coins, "teacher_view": teacher_view})
    augment = GammaView()
    batch = shapes_batch(torch.Generator().manual_seed(0), augment=augment)
    seen = {}
    objective.student.register_forward_pre_hook(lambda module, args: seen.setdefault("student", args[0]))
    objective.teacher.module.register_forward_pre_hook(lambda module, args: seen.setdefault("teacher", args[0]))
    objective.loss(batch, 0, 10)
    image = torch.cat([batch.labelled_image, batch.unlabelled_image])
    views = {"image": image, "jittered": 0.9 * image, "view": (0.9 * image) ** 2}
    assert augment.coins == [coins]
    assert torch.equal(seen["student"], views[student_sees]) and torch.equal(seen["teacher"], views[teacher_sees])


def test_a_few_sgd_steps_lower_the_total_loss():
    objective = make({"global_weight": 1.0, "local_weight": 1.0})
    history = run(objective, steps=16, lr=0.05)
    totals = [h["total"] for h in history]
    assert all(math.isfinite(v) for v in totals)
    assert sum(totals[-3:]) / 3 < 0.8 * sum(totals[:3]) / 3, totals


def test_stage_i_state_loads_into_stage_ii_and_resumes_exactly():
    stage_i = make(PRESETS["action_stage_i"])
    run(stage_i, steps=2)
    state = copy.deepcopy(stage_i.state_dict())
    assert {"isd.global_queue", "isd.local_queue", "isd.global_queue_ptr", "isd.local_queue_ptr"} <= set(state)
    assert any(k.startswith("teacher.module.") for k in state) and any(k.startswith("student.") for k in state)
    assert any(k.startswith("isd.teacher_local_head.") for k in state)

    stage_ii = make(PRESETS["action_stage_ii"], seed=123)
    assert trainable_names(stage_ii) > trainable_names(stage_i)  # the decoder trains in stage ii
    stage_ii.load_state_dict(state)
    for key, value in stage_ii.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert all(p.requires_grad for p in stage_ii.student.decoder.parameters())

    # the released hand-off: only the two UNets; heads and queues keep their fresh values
    fresh = make(PRESETS["action_stage_ii"], seed=321)
    queue0 = fresh.isd.global_queue.clone()
    fresh.load_student_and_teacher(state)
    assert all(torch.equal(v, state["student." + k]) for k, v in fresh.student.state_dict().items())
    assert all(torch.equal(v, state["teacher." + k]) for k, v in fresh.teacher.state_dict().items())
    assert torch.equal(fresh.isd.global_queue, queue0) and not torch.equal(queue0, state["isd.global_queue"])

    # resume: same state + same RNG gives the same next loss
    resumed = make(PRESETS["action_stage_i"], seed=99)
    resumed.load_state_dict(state)
    batch = shapes_batch(torch.Generator().manual_seed(7))
    stage_i.train(), resumed.train()
    torch.manual_seed(5)
    a = stage_i.loss(batch, 2, 10).total
    torch.manual_seed(5)
    b = resumed.loss(batch, 2, 10).total
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "values, field",
    [
        ({"tau_student": 0.0}, "tau_student"),
        ({"tau_teacher": -0.1}, "tau_teacher"),
        ({"latent_dim": 0}, "latent_dim"),
        ({"queue_size": 2.5}, "queue_size"),
        ({"ema_momentum": 1.0}, "ema_momentum"),
        ({"global_weight": -1.0}, "global_weight"),
        ({"local_weight": float("nan")}, "local_weight"),
        ({"sup_weight": -0.5}, "sup_weight"),
        ({"window": 300}, "window"),
        ({"window": 256}, "window"),
        ({"stride": 0}, "stride"),
        ({"pool_size": 65}, "pool_size"),
        ({"local_windows": "action_36"}, "local_windows"),
        ({"local_layout": "reshape"}, "local_layout"),
        ({"teacher_head_grad": "none"}, "teacher_head_grad"),
        ({"teacher_view": "both"}, "teacher_view"),
        ({"view_coins": "per_step"}, "view_coins"),
        ({"train_encoder": 1}, "train_encoder"),
        ({"teacher_head_ema": "yes"}, "teacher_head_ema"),
        ({"train_decoder": False}, "train_decoder"),  # with the default local/sup weights
        ({"global_weight": 0.0, "local_weight": 0.0, "sup_weight": 0.0}, "global_weight"),
    ],
)
def test_invalid_values_name_the_field(values, field):
    with pytest.raises(ConfigError, match=f"ISDPretrainConfig.{field}"):
        ISDPretrainConfig(**values)
