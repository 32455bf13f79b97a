"""Objectives (supervised, mean teacher), the Batch/Objective interface and the registry."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.methods import synthetic

from methods.mean_teacher import MeanTeacherConfig, MeanTeacherObjective
from methods.objective import Batch, IdentityStrongAugment, Objective, strong_view
from methods.registry import MODELS, OBJECTIVES, build_model, build_objective, objective_config
from methods.supervised import SupervisedConfig, SupervisedObjective

TINY = dict(num_classes=2, channels=(4, 8, 8, 8, 8))


def square_batch(generator: torch.Generator, b_l: int = 4, b_u: int = 4, size: int = 16, augment=None) -> Batch:
    return synthetic.square_batch(generator, b_l, b_u, size, augment)


def train(objective: Objective, steps: int = 20, lr: float = 0.05) -> list[float]:
    generator = torch.Generator().manual_seed(1)
    optimiser = torch.optim.SGD(objective.trainable_parameters(), lr=lr, momentum=0.9)
    objective.train()
    losses = []
    for step in range(steps):
        out = objective.loss(square_batch(generator), step, steps)
        optimiser.zero_grad(set_to_none=True)
        out.total.backward()
        optimiser.step()
        objective.after_optimizer_step(step)
        losses.append(float(out.total.detach()))
    return losses


@pytest.mark.parametrize("name, config", [("supervised", {}), ("mean_teacher", {"rampup_steps": 0})])
def test_total_loss_decreases_on_synthetic_squares(name, config):
    torch.manual_seed(0)
    objective = build_objective(name, build_model("unet", **TINY), config)
    losses = train(objective)
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert all(torch.isfinite(torch.tensor(losses)))
    assert last < 0.5 * first, losses


def test_supervised_terms_and_interface():
    torch.manual_seed(0)
    model = build_model("unet", **TINY)
    objective = build_objective("supervised", model, {"sup_weight": 0.5})
    assert objective.eval_model() is model and not objective.requires_unlabelled
    batch = square_batch(torch.Generator().manual_seed(0))
    out = objective.loss(Batch(batch.labelled_image, batch.label), 0, 10)  # no unlabelled needed
    assert set(out.terms) == {"sup", "ce", "dice"}
    assert all(not t.requires_grad for t in out.terms.values())
    assert out.total.requires_grad
    assert torch.allclose(out.total.detach(), 0.5 * (out.terms["ce"] + out.terms["dice"]))
    assert {id(p) for p in objective.trainable_parameters()} == {id(p) for p in model.parameters()}


def test_mean_teacher_terms_rampup_and_teacher_update():
    torch.manual_seed(0)
    model = build_model("unet", **TINY)
    objective = build_objective("mean_teacher", model, {"rampup_steps": 100, "consistency_weight": 0.3})
    assert objective.requires_unlabelled
    teacher_ids = {id(p) for p in objective.teacher.parameters()}
    assert teacher_ids.isdisjoint(id(p) for p in objective.trainable_parameters())
    batch = square_batch(torch.Generator().manual_seed(0))
    out = objective.loss(batch, 0, 100)
    assert set(out.terms) == {"sup", "ce", "dice", "consistency", "consistency_weight"}
    assert out.terms["consistency_weight"].item() == pytest.approx(0.3 * torch.exp(torch.tensor(-5.0)).item())
    expected = out.terms["sup"] + out.terms["consistency_weight"] * out.terms["consistency"]
    assert torch.allclose(out.total.detach(), expected)
    assert objective.loss(batch, 100, 100).terms["consistency_weight"].item() == pytest.approx(0.3)
    before = [p.clone() for p in objective.teacher.module.parameters()]
    out.total.backward()
    torch.optim.SGD(objective.trainable_parameters(), lr=0.1).step()
    objective.after_optimizer_step(0)
    for t, t0, s in zip(objective.teacher.module.parameters(), before, model.parameters()):
        assert torch.allclose(t, 0.99 * t0 + 0.01 * s.detach(), atol=1e-6)
    with pytest.raises(ValueError, match="unlabelled_image"):
        objective.loss(Batch(batch.labelled_image, batch.label), 0, 100)


def test_mean_teacher_consistency_reaches_the_student_gradient():
    batch = square_batch(torch.Generator().manual_seed(0))
    grads = []
    for weight in (0.0, 10.0):
        torch.manual_seed(0)
        objective = build_objective(
            "mean_teacher", build_model("unet", **TINY), {"consistency_weight": weight, "rampup_steps": 0}
        )
        torch.manual_seed(1)
        objective.loss(batch, 0, 10).total.backward()
        grads.append(torch.cat([p.grad.flatten() for p in objective.student.parameters()]))
    assert not torch.allclose(grads[0], grads[1])


def test_mean_teacher_bn_mode_eval_copies_student_buffers():
    torch.manual_seed(0)
    objective = build_objective("mean_teacher", build_model("unet", **TINY), {"teacher_bn_mode": "eval"})
    assert objective.teacher.copy_buffers
    train(objective, steps=2)
    assert not objective.teacher.module.training
    for t, s in zip(objective.teacher.module.buffers(), objective.student.buffers()):
        assert torch.equal(t, s)
    released = build_objective("mean_teacher", build_model("unet", **TINY), {})
    assert not released.teacher.copy_buffers


def test_mean_teacher_state_dict_round_trip_resumes_exactly():
    torch.manual_seed(0)
    objective = build_objective("mean_teacher", build_model("unet", **TINY), {"rampup_steps": 0})
    train(objective, steps=3)
    state = copy.deepcopy(objective.state_dict())
    assert any(k.startswith("teacher.module.") for k in state) and any(k.startswith("student.") for k in state)

    torch.manual_seed(123)  # a different initialisation
    restored = build_objective("mean_teacher", build_model("unet", **TINY), {"rampup_steps": 0})
    restored.load_state_dict(state)
    for (k, a), b in zip(objective.teacher.state_dict().items(), restored.teacher.state_dict().values()):
        assert torch.equal(a, b), k
    for a, b in zip(objective.student.state_dict().values(), restored.student.state_dict().values()):
        assert torch.equal(a, b)

    batch = square_batch(torch.Generator().manual_seed(7))
    objective.train(), restored.train()
    torch.manual_seed(5)
    a = objective.loss(batch, 3, 10).total
    torch.manual_seed(5)
    b = restored.loss(batch, 3, 10).total
    assert torch.equal(a, b)


def test_batch_validation():
    image = torch.rand(2, 1, 16, 16)
    with pytest.raises(ValueError, match="label"):
        Batch(image, torch.zeros(2, 16, 16, dtype=torch.int32))
    with pytest.raises(ValueError, match="label"):
        Batch(image, torch.zeros(2, 16, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="unlabelled_image"):
        Batch(image, torch.zeros(2, 16, 16, dtype=torch.int64), torch.rand(2, 1, 8, 8))


def test_identity_strong_view_keeps_tensors():
    image, pseudo, conf = torch.rand(2, 1, 4, 4), torch.zeros(2, 4, 4, dtype=torch.int64), torch.rand(2, 4, 4)
    view = strong_view(IdentityStrongAugment(), image, pseudo, conf)
    assert view.image is image and view.pseudo_label is pseudo and view.confidence is conf


def test_identity_pretrain_views_are_unchanged_new_tensors():
    image = torch.rand(2, 1, 4, 4)
    jittered, teacher = IdentityStrongAugment().pretrain_views(image, "per_batch")
    assert torch.equal(jittered, image) and torch.equal(teacher, image)
    assert jittered.data_ptr() != image.data_ptr() and teacher.data_ptr() not in (image.data_ptr(), jittered.data_ptr())


# ---------------------------------------------------------------- registry and config validation


def test_registry_names():
    assert {"supervised", "mean_teacher"} <= set(OBJECTIVES)
    assert OBJECTIVES["supervised"] is SupervisedObjective and OBJECTIVES["mean_teacher"] is MeanTeacherObjective
    assert "unet" in MODELS


def test_unknown_objective_lists_known_names():
    with pytest.raises(ValueError, match=r"objective 'mona_typo': unknown objective.*mean_teacher.*supervised"):
        build_objective("mona_typo", build_model("unet", **TINY), {})


def test_a_model_or_params_of_the_wrong_kind_is_a_config_error():
    from methods.errors import ConfigError

    with pytest.raises(ConfigError, match=r"objective 'mean_teacher': the student model must be a torch.nn.Module .* got str"):
        build_objective("mean_teacher", "unet")
    with pytest.raises(ConfigError, match=r"objective_params: a dict of SupervisedConfig keys, got \['x'\]"):
        build_objective("supervised", build_model("unet", **TINY), ["x"])


def test_unknown_config_key_lists_valid_keys():
    with pytest.raises(ValueError, match=r"\['consistancy_weight'\].*consistency_weight"):
        build_objective("mean_teacher", build_model("unet", **TINY), {"consistancy_weight": 0.1})
    with pytest.raises(ValueError, match="sup_weight"):
        objective_config("supervised", {"ema_momentum": 0.9})


def test_unknown_model_and_model_argument():
    with pytest.raises(ValueError, match=r"model 'vnet': unknown model.*unet"):
        build_model("vnet")
    with pytest.raises(ValueError, match=r"\['width'\].*channels"):
        build_model("unet", width=8)


@pytest.mark.parametrize(
    "values, field",
    [
        ({"ema_momentum": 1.0}, "ema_momentum"),
        ({"ema_momentum": -0.1}, "ema_momentum"),
        ({"consistency_weight": -1.0}, "consistency_weight"),
        ({"rampup_steps": 1.5}, "rampup_steps"),
        ({"rampup_steps": -1}, "rampup_steps"),
        ({"teacher_bn_mode": "frozen"}, "teacher_bn_mode"),
        ({"input_noise_std": -0.1}, "input_noise_std"),
        ({"sup_weight": 0.0}, "sup_weight"),
        ({"sup_weight": float("nan")}, "sup_weight"),
    ],
)
def test_invalid_mean_teacher_values_name_the_field(values, field):
    with pytest.raises(ValueError, match=f"MeanTeacherConfig.{field}"):
        MeanTeacherConfig(**values)


def test_invalid_supervised_weight_and_defaults():
    with pytest.raises(ValueError, match="SupervisedConfig.sup_weight"):
        SupervisedConfig(sup_weight=-0.5)
    assert SupervisedConfig().sup_weight == 1.0
    assert MeanTeacherConfig() == MeanTeacherConfig(1.0, 0.99, 0.1, 30_000, "train", 0.1)
    with pytest.raises(Exception):
        SupervisedConfig().sup_weight = 2.0  # frozen


def test_objective_rejects_wrong_config_type():
    with pytest.raises(ValueError, match="MeanTeacherConfig"):
        MeanTeacherObjective(build_model("unet", **TINY), SupervisedConfig())
