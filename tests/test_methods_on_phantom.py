"""Each method's objective, at the smoke profile's sizes, lowers its loss on phantom data in a few steps."""

import pytest
import torch

from medseg_platform.data.datasets import SliceBank
from medseg_platform.data.layout import AcdcLayout
from medseg_platform.data.phantom import ensure_phantom
from medseg_platform.engine import StrongAugmentAdapter
from medseg_platform.profiles import PROFILES
from medseg_platform.recipes import METHODS, isd_stage, method_overrides, with_epoch_length
from methods.objective import Batch
from methods.registry import build_model, build_objective

PROFILE = PROFILES["smoke"]


@pytest.fixture(scope="module")
def phantom_batch(phantom_cache):
    root = ensure_phantom(phantom_cache, **PROFILE.phantom)
    layout = AcdcLayout(root)
    bank = SliceBank(layout, layout.train_slices, PROFILE.trial.data.patch_size)
    labelled = torch.arange(0, 12, 3)  # 4 slices from different positions
    image, label = bank.batch(labelled)
    unlabelled, _ = bank.batch(torch.arange(1, 12, 3))
    return image, label, unlabelled


def objectives():
    for method in METHODS:
        overrides = method_overrides(method, PROFILE)
        params, _ = with_epoch_length(overrides["objective_params"], 2)  # a trial's is its labelled set's epoch
        yield pytest.param(overrides["objective"], params, id=method)
    stage = isd_stage(PROFILE, "mona")
    yield pytest.param(stage["objective"], stage["objective_params"], id="isd_pretrain")


@pytest.mark.parametrize("name, params", list(objectives()))
def test_a_few_steps_lower_the_loss_on_a_fixed_phantom_batch(name, params, phantom_batch):
    torch.manual_seed(0)
    image, label, unlabelled = phantom_batch
    if name == "isd_pretrain":  # 3 + 3 per step as released; the queue (36) must be a multiple of the batch
        image, label, unlabelled = image[:3], label[:3], unlabelled[:3]
    model = build_model("unet", num_classes=4, channels=PROFILE.trial.model.channels)
    objective = build_objective(name, model, params)
    optimizer = torch.optim.SGD(objective.trainable_parameters(), lr=0.05, momentum=0.9)
    losses = []
    for step in range(12):
        # the same images every step, but each objective's own randomness (mixing, warps, sampling) stays on
        augment = StrongAugmentAdapter(torch.Generator().manual_seed(step), "cutmix", 4, advmorph_p=0.0)
        out = objective.loss(Batch(image, label, unlabelled, augment), step, 100)
        optimizer.zero_grad()
        out.total.backward()
        optimizer.step()
        objective.after_optimizer_step(step)
        losses.append(float(out.total.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
