"""The blocked ISD KL (methods/isd.py ``blocked_queue_kl``) against the dense implementation it replaced.

The reference (``benchmarks/isd_reference.py``) is the released-layout code as it stood before the blocked reformulation (issue 10,
item 3): the (N, M) cosine logits materialised twice (``queue.clone()``, ``cosine_logits`` then divided
by tau), ``relational_kl`` by autograd. Everything is compared in float64 at rtol 1e-6: loss terms,
the gradient of every parameter, and the queues after several SGD steps, for both ``local_layout``
values and the three stage presets (docs/methods.md, 'ISD pretraining: the released local term in blocks').
"""

from __future__ import annotations

import pytest
import torch

import methods.isd as isd_module
from methods.errors import DataError
from methods.isd import ISDConfig, ISDRelationalKL, blocked_queue_kl
from methods.isd_pretrain import PRESETS, ISDPretrainObjective
from tests.methods.test_isd import GammaView, shapes_batch
from methods.registry import build_model, build_objective
from benchmarks.isd_reference import dense_cosine_logits, dense_relational_kl, use_dense_reference

RTOL = 1e-6
TINY = dict(num_classes=4, channels=(4, 8, 8, 8, 8))
SMALL = dict(image_size=64, window=16, stride=8, pool_size=4, latent_dim=16, queue_size=12)
STEP = dict(SMALL, image_size=32, window=8, stride=4)  # 6x6 / 7x7 windows on 32x32 patches (fast steps)


# ------------------------------------------------------------------ the dense reference (old code)
# benchmarks/isd_reference.py holds the old computation (shared with benchmarks/bench_isd.py)


def dense_queue_kl(student, teacher, queue, tau_student, tau_teacher):
    return dense_relational_kl(dense_cosine_logits(student, queue, tau_student), dense_cosine_logits(teacher, queue, tau_teacher))


def assert_close(actual, expected, what):
    """float64, rtol 1e-6 per element; atol 1e-12 only for entries that are 0 up to rounding (e.g. the
    gradient of a conv bias followed by BatchNorm, about 1e-15 either way)."""
    assert actual.dtype == expected.dtype == torch.float64, what
    torch.testing.assert_close(actual.detach(), expected.detach(), rtol=RTOL, atol=1e-12, msg=what)


@pytest.fixture(params=["one_block", "ragged_blocks"])
def block_budget(request, monkeypatch):
    """Default blocks (one block at these sizes) or blocks of 50 rows whose last one is ragged."""
    if request.param == "ragged_blocks":
        monkeypatch.setitem(isd_module.BLOCK_ELEMENTS, "cpu", 50 * 768)  # M = 12 * 4 * 4**2 = 768 queue rows
    return request.param


# ------------------------------------------------------------------ the KL of plain matrices


@pytest.mark.parametrize("taus", [(0.1, 0.01), (0.1, 0.1), (0.5, 0.002)], ids=["action", "mona", "underflow"])
@pytest.mark.parametrize("block_rows", [None, 1, 7, 40])
@pytest.mark.parametrize("grads", ["both", "student", "teacher"])
def test_blocked_queue_kl_matches_dense_reference(taus, block_rows, grads):
    torch.manual_seed(0)
    n, m, d = 40, 90, 9
    student, teacher = torch.randn(n, d, dtype=torch.float64), torch.randn(n, d, dtype=torch.float64)
    queue = torch.randn(m, d, dtype=torch.float64) * 3  # rows of any scale: every use re-normalises
    if taus[1] == 0.002:  # the teacher softmax underflows to exact zeros (float64 exp(-745))
        assert (torch.softmax(dense_cosine_logits(teacher, queue, taus[1]), 1) == 0).any()
    values, gradients = [], []
    for fn in (dense_queue_kl, lambda *a: blocked_queue_kl(*a, block_rows=block_rows)):
        s = student.clone().requires_grad_(grads in ("both", "student"))
        t = teacher.clone().requires_grad_(grads in ("both", "teacher"))
        value = fn(s, t, queue, *taus)
        value.backward()
        values.append(value.detach())
        gradients.append([x.grad for x in (s, t)])
    assert_close(values[1], values[0], "loss")
    for new, old, name in zip(gradients[1], gradients[0], ("student", "teacher")):
        assert (new is None) == (old is None), name
        if old is not None:
            assert torch.isfinite(new).all()
            assert_close(new, old, f"{name} gradient")
    with torch.no_grad():  # the no-gradient path (a term of weight 0) gives the same value
        assert_close(blocked_queue_kl(student, teacher, queue, *taus, block_rows=block_rows), values[0], "no-grad loss")


def test_blocked_queue_kl_uses_the_dense_path_when_the_queue_needs_a_gradient_and_runs_under_autocast():
    torch.manual_seed(1)
    student, teacher, queue = torch.randn(12, 5), torch.randn(12, 5), torch.randn(30, 5, requires_grad=True)
    blocked_queue_kl(student, teacher, queue, 0.1, 0.01).backward()
    expected = queue.grad.clone()
    queue.grad = None
    dense_queue_kl(student, teacher, queue, 0.1, 0.01).backward()
    torch.testing.assert_close(expected, queue.grad)
    s = student.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = blocked_queue_kl(s, teacher, queue.detach(), 0.1, 0.1)
    value.backward()
    assert value.dtype == s.grad.dtype == torch.float32 and torch.isfinite(s.grad).all()
    torch.testing.assert_close(value, dense_queue_kl(student, teacher, queue.detach(), 0.1, 0.1), rtol=1e-5, atol=1e-6)
    with pytest.raises(DataError, match=r"\(N, d\)"):
        blocked_queue_kl(student, teacher[:5], queue, 0.1, 0.1)
    # half-precision rows (the local head's under bf16 autocast) normalised and divided by the temperatures in float32:
    # in bf16, the teacher's logits at tau 0.01 moved by up to 0.24 and the KL by 4e-3 (the ACTION review)
    rows = [torch.randn(64, 9).to(torch.bfloat16) for _ in range(2)]
    keys = torch.randn(200, 9)
    assert blocked_queue_kl(*rows, keys, 0.1, 0.01).item() == pytest.approx(
        dense_queue_kl(*(r.float() for r in rows), keys, 0.1, 0.01).item(), rel=1e-6)


# ------------------------------------------------------------------ the relational module


@pytest.mark.parametrize("layout", ["as_coded_reshape", "per_patch"])
@pytest.mark.parametrize("teacher_head_grad", ["as_released", "stop_gradient"])
def test_isd_local_and_global_terms_match_dense_reference(layout, teacher_head_grad, block_budget):
    def build():
        torch.manual_seed(0)
        config = ISDConfig(**{**SMALL, "local_layout": layout, "teacher_head_grad": teacher_head_grad})
        return ISDRelationalKL(4, 8, config).double()

    new, old = build(), use_dense_reference(build())
    torch.manual_seed(3)
    inputs = [torch.randn(6, 4, 64, 64, dtype=torch.float64), torch.randn(6, 4, 64, 64, dtype=torch.float64),
              torch.randn(6, 8, 4, 4, dtype=torch.float64), torch.randn(6, 8, 4, 4, dtype=torch.float64)]
    results = []
    for isd in (new, old):
        z_s, z_t, e_s, e_t = (x.clone().requires_grad_() for x in inputs)
        for _ in range(3):  # the queues fill with teacher keys between calls
            g, loc = isd.global_term(e_s, e_t), isd.local_term(z_s, z_t)
            (g.loss + loc.loss).backward()
            isd.enqueue(g.keys, loc.keys)
        grads = {name: p.grad for name, p in isd.named_parameters()}
        grads.update(z_s=z_s.grad, z_t=z_t.grad, e_s=e_s.grad, e_t=e_t.grad)
        results.append((g.loss.detach(), loc.loss.detach(), grads, dict(isd.named_buffers())))
    (g_new, l_new, grads_new, buffers_new), (g_old, l_old, grads_old, buffers_old) = results
    assert_close(g_new, g_old, "global loss")
    assert_close(l_new, l_old, "local loss")
    assert grads_new.keys() == grads_old.keys()
    for name in grads_old:
        assert (grads_new[name] is None) == (grads_old[name] is None), name
        if grads_old[name] is not None:
            assert_close(grads_new[name], grads_old[name], f"gradient of {name}")
    for name in buffers_old:
        assert torch.equal(buffers_new[name], buffers_old[name]), name  # keys are the same tensors, no rounding
    if layout == "as_coded_reshape":  # local_logits rebuilds the dense logits the term never materialises
        z_s, z_t = inputs[:2]
        s_logits, t_logits = new.local_logits(z_s, z_t)
        assert_close(dense_relational_kl(s_logits, t_logits), new.local_term(z_s, z_t).loss, "local_logits")


# ------------------------------------------------------------------ the whole pretraining step


def make_pair(config: dict):
    def build():
        torch.manual_seed(0)
        return build_objective("isd_pretrain", build_model("unet", **TINY), {**STEP, **config}).double()

    new, old = build(), build()
    use_dense_reference(old.isd)
    return new, old


def run_steps(objective: ISDPretrainObjective, steps: int = 3):
    """SGD steps on fixed float64 batches; per step: logged terms, every parameter's gradient, the state."""
    generator = torch.Generator().manual_seed(1)
    optimiser = torch.optim.SGD(objective.trainable_parameters(), lr=0.05, momentum=0.9)
    objective.train()
    torch.manual_seed(2)  # dropout masks: the same RNG stream must give the same numbers
    history = []
    for step in range(steps):
        batch = shapes_batch(generator, size=STEP["image_size"], augment=GammaView())
        batch = type(batch)(batch.labelled_image.double(), batch.label, batch.unlabelled_image.double(), batch.strong_augment)
        out = objective.loss(batch, step, steps)
        optimiser.zero_grad(set_to_none=True)
        out.total.backward()
        grads = {name: p.grad.clone() for name, p in objective.named_parameters() if p.grad is not None}
        optimiser.step()
        objective.after_optimizer_step(step)
        history.append((dict(out.terms), grads, {k: v.clone() for k, v in objective.state_dict().items()}))
    return history


@pytest.mark.parametrize("layout", ["as_coded_reshape", "per_patch"])
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_isd_pretrain_step_matches_dense_reference(preset, layout, monkeypatch):
    monkeypatch.setitem(isd_module.BLOCK_ELEMENTS, "cpu", 50 * 768)  # several blocks, the last one ragged
    new, old = make_pair({**PRESETS[preset], "local_layout": layout})
    history_new, history_old = run_steps(new), run_steps(old)
    for step, ((terms_n, grads_n, state_n), (terms_o, grads_o, state_o)) in enumerate(zip(history_new, history_old)):
        assert terms_n.keys() == terms_o.keys()
        for name in terms_o:
            assert_close(terms_n[name], terms_o[name], f"step {step} term {name}")
        assert grads_n.keys() == grads_o.keys(), f"step {step}: parameters with a gradient"
        assert any(name.startswith("student.") for name in grads_o) and any(name.startswith("isd.") for name in grads_o)
        for name in grads_o:
            assert_close(grads_n[name], grads_o[name], f"step {step} gradient of {name}")
        assert state_n.keys() == state_o.keys()
        for name in state_o:
            if state_o[name].is_floating_point():
                assert_close(state_n[name], state_o[name], f"step {step} state {name}")
            else:
                assert torch.equal(state_n[name], state_o[name]), f"step {step} state {name}"
    final = history_new[-1][2]
    assert int(final["isd.local_queue_ptr"]) == int(final["isd.global_queue_ptr"]) == (3 * 6) % 12


# ------------------------------------------------------------------ denormal probabilities (docs/methods.md)


@pytest.fixture
def one_thread():
    """The mode is only set with one intra-op thread (methods.isd.flushed_denormals)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def mode_inside(monkeypatch):
    """Records, at each call of the blocked KL's loop, whether this thread flushes denormals there."""
    seen = []
    blocks = isd_module._blocked_queue_kl_blocks

    def spy(*args):
        seen.append(isd_module._flushing_denormals())
        return blocks(*args)

    monkeypatch.setattr(isd_module, "_blocked_queue_kl_blocks", spy)
    return seen


def _cpu_flushes() -> bool:
    """Whether this CPU has the modes at all (x86 with SSE3, recent ARM); the test of the speed-up's cause needs them."""
    supported = torch.set_flush_denormal(True)
    torch.set_flush_denormal(False)
    return supported


def test_blocked_queue_kl_flushes_denormal_probabilities_and_gives_the_same_float32_numbers(one_thread, mode_inside):
    """ACTION's tau_t = 0.01 puts many teacher probabilities of a row below float32's smallest normal number; an Intel
    CPU computed ACTION's stage ii 4x slower with them. Flushed to zero they change no float32 number here."""
    torch.manual_seed(0)
    n, m, d = 64, 2048, 36
    student, teacher, queue = torch.randn(n, d), torch.randn(n, d), torch.randn(m, d)
    p = torch.softmax(dense_cosine_logits(teacher, queue, 0.01), 1)
    tiny = torch.finfo(torch.float32).tiny
    assert ((p > 0) & (p < tiny)).sum() > 1000  # the case exists: denormal probabilities

    def run():
        s, t = student.clone().requires_grad_(), teacher.clone().requires_grad_()
        value = blocked_queue_kl(s, t, queue, 0.1, 0.01, block_rows=16)
        value.backward()
        return value.detach(), s.grad, t.grad

    assert not isd_module._flushing_denormals()
    flushed = run()
    assert mode_inside == [_cpu_flushes()]  # flushed inside, where the CPU can
    assert not isd_module._flushing_denormals()  # and put back
    with isd_module.denormals_kept():
        kept = run()
    assert mode_inside[-1] is False
    for a, b, what in zip(flushed, kept, ("loss", "student gradient", "teacher gradient")):
        assert torch.equal(a, b), what


def test_the_denormal_mode_is_put_back_after_an_error_and_left_alone_where_it_cannot_be_scoped(one_thread, mode_inside):
    cpu = torch.device("cpu")
    with pytest.raises(RuntimeError, match="inside"):
        with isd_module.flushed_denormals(cpu):
            assert isd_module._flushing_denormals() == _cpu_flushes()
            raise RuntimeError("inside")
    assert not isd_module._flushing_denormals()
    if torch.set_flush_denormal(True):  # a caller that flushes denormals itself keeps its mode
        try:
            with isd_module.flushed_denormals(cpu):
                pass
            assert isd_module._flushing_denormals()
        finally:
            torch.set_flush_denormal(False)
    torch.set_num_threads(2)  # workers would keep denormals, and one created inside would inherit the mode for good
    blocked_queue_kl(torch.randn(8, 4), torch.randn(8, 4), torch.randn(20, 4), 0.1, 0.01)
    assert mode_inside == [False] and not isd_module._flushing_denormals()


def test_actions_stage_ii_trains_to_the_same_state_with_denormals_flushed(one_thread, mode_inside):
    """Three quick-size steps of ACTION's stage ii (tau_t = 0.01), flushed and not: every logged term and every state
    entry (weights, queues, BatchNorm statistics) equal bit for bit."""
    from medseg_platform.profiles import PROFILES
    from medseg_platform.recipes import isd_stage
    from medseg_platform.engine import StrongAugmentAdapter
    from methods.objective import Batch

    profile = PROFILES["quick"]
    stage = isd_stage(profile, "action_stage_ii")
    h, w = profile.trial.data.patch_size

    def train():
        torch.manual_seed(0)
        model = build_model("unet", num_classes=4, channels=profile.trial.model.channels)
        objective = build_objective(stage["objective"], model, stage["objective_params"])
        optimizer = torch.optim.SGD(objective.trainable_parameters(), lr=0.01, momentum=0.9)
        data = torch.Generator().manual_seed(1)
        terms = []
        for step in range(3):
            image, unlabelled = torch.rand(3, 1, h, w, generator=data), torch.rand(3, 1, h, w, generator=data)
            label = (image[:, 0] * 4).long().clamp(max=3)
            out = objective.loss(Batch(image, label, unlabelled, StrongAugmentAdapter(torch.Generator().manual_seed(step), "cutmix", 4)),
                                 step, 100)
            optimizer.zero_grad()
            out.total.backward()
            optimizer.step()
            objective.after_optimizer_step(step)
            terms.append({k: float(v) for k, v in out.terms.items()})
        return terms, objective.state_dict()

    flushed_terms, flushed_state = train()
    assert mode_inside == [_cpu_flushes()] * 3
    with isd_module.denormals_kept():
        kept_terms, kept_state = train()
    assert mode_inside[3:] == [False] * 3
    assert flushed_terms == kept_terms
    assert flushed_state.keys() == kept_state.keys()
    for key, value in flushed_state.items():
        assert torch.equal(value, kept_state[key]), key
