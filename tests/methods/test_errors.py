"""Bad configuration and bad data raise one-line ``MedsegError`` subclasses in every objective.

The Tune layer does not retry a :class:`methods.errors.MedsegError` (``medseg_platform.study.trainable.application_error``),
so a deterministic mistake fails once instead of ``max_retries`` times. For every registered objective: a bad
config when it is built, and bad data fed at run time.
"""

from __future__ import annotations

import re

import pytest
import torch

from tests.methods import synthetic

import medseg_platform.errors
import methods.errors
from methods.errors import ConfigError, DataError, MedsegError
from methods.objective import Batch, IdentityStrongAugment
from methods.registry import OBJECTIVES, build_model, build_objective, objective_config

TINY = dict(num_classes=2, channels=(4, 8, 8, 8, 8))
#: "<where>: <what is wrong> (<what to do>)" on one line
ONE_LINE = re.compile(r"^[^\n:]+: [^\n]+ \([^\n]+\)$")

# small sizes of the pixel-contrast objectives (the defaults need 256 x 512 samples per class)
MONA_SMALL = dict(num_anchors=8, num_negatives=4, bank_capacity_background=64, bank_capacity_foreground=32,
                  nn_pool_capacity=4, nn_topk=2, nn_pool_resolution=4, steps_per_epoch=2)
ACTION_SMALL = dict(num_queries=8, num_negatives=4, repr_dim=8)
ISD_SMALL = dict(image_size=64, window=16, stride=8, pool_size=4, latent_dim=16, queue_size=12)


def build(name: str, config: dict | None = None):
    torch.manual_seed(0)
    return build_objective(name, build_model("unet", **TINY), config)


def batch(size: int = 16, b_l: int = 2, b_u: int = 2, augment=IdentityStrongAugment()) -> Batch:
    return synthetic.square_batch(torch.Generator().manual_seed(0), b_l, b_u, size, augment)


def without_strong_augment(full: Batch) -> Batch:
    return Batch(full.labelled_image, full.label, full.unlabelled_image)


def assert_one_line(error: pytest.ExceptionInfo) -> None:
    assert ONE_LINE.match(str(error.value)), str(error.value)


def test_platform_errors_are_the_methods_classes():
    assert medseg_platform.errors.MedsegError is methods.errors.MedsegError
    assert medseg_platform.errors.ConfigError is methods.errors.ConfigError
    assert medseg_platform.errors.DataError is methods.errors.DataError
    # ValueError stays a base: code that caught the former ValueErrors still catches them
    assert issubclass(ConfigError, MedsegError) and issubclass(ConfigError, ValueError)
    assert issubclass(DataError, MedsegError) and issubclass(DataError, ValueError)


#: One bad parameter per registered objective, and the field its error must name (a new objective adds its line here).
BAD_CONFIGS = [
    ("supervised", {"sup_weight": 0.0}, "SupervisedConfig.sup_weight"),
    ("mean_teacher", {"ema_momentum": 1.0}, "MeanTeacherConfig.ema_momentum"),
    ("mona", {"sampler_groups": 10}, "MonaConfig.sampler_groups"),
    ("arco", {"negative_rank_low": 5, "negative_rank_high": 4}, "ArcoConfig.negative_rank_high"),
    ("action", {"temperature": 0.0}, "ActionConfig.temperature"),
    ("isd_pretrain", {"teacher_view": "both"}, "ISDPretrainConfig.teacher_view"),
]


def test_every_registered_objective_is_covered_here():
    missing = sorted(set(OBJECTIVES) - {name for name, _, _ in BAD_CONFIGS})
    assert not missing, (f"objective(s) {missing} have no line in BAD_CONFIGS ({__file__}): add (name, a bad parameter, "
                         "'<Config class>.<field>') so their one-line config errors are tested")


@pytest.mark.parametrize("name, bad, field", BAD_CONFIGS)
def test_a_bad_config_is_a_config_error_naming_the_field(name, bad, field):
    with pytest.raises(ConfigError, match=re.escape(field)) as error:
        build(name, bad)
    assert_one_line(error)
    with pytest.raises(ConfigError, match=re.escape(field)):  # validated without a model too (before Ray starts)
        objective_config(name, bad)


def test_unknown_names_and_keys_are_config_errors():
    with pytest.raises(ConfigError, match=r"objective 'mona2': unknown objective.*arco") as error:
        objective_config("mona2")
    assert_one_line(error)
    with pytest.raises(ConfigError, match=r"unknown MonaConfig keys \['sampler_group'\].*sampler_groups") as error:
        objective_config("mona", {"sampler_group": 9})
    assert_one_line(error)
    with pytest.raises(ConfigError, match=r"model 'unet': unknown arguments \['width'\]") as error:
        build_model("unet", width=8)
    assert_one_line(error)


def test_a_bool_or_text_field_of_another_kind_is_refused_for_every_objective():
    """The extension review: a new objective's bool field given "false" (from Python or a JSON file) was truthy and
    trained the other way; every objective's bool and str fields are checked by their annotation."""
    import dataclasses
    import typing

    from methods.objective import check_annotated_kinds

    checked = 0
    for name, cls in OBJECTIVES.items():
        hints = typing.get_type_hints(cls.config_class)
        for field in dataclasses.fields(cls.config_class):
            wrong = {bool: "false", str: 3}.get(hints[field.name])
            if wrong is None:
                continue
            with pytest.raises(ConfigError, match=rf"{cls.config_class.__name__}.{field.name}: must be a ") as error:
                objective_config(name, {field.name: wrong})
            assert_one_line(error)
            checked += 1
    assert checked >= 10
    check_annotated_kinds(OBJECTIVES["mona"].config_class, {"copy_bn_update": False, "sampler": "uniform"})  # right kinds pass


def test_supervised_rejects_images_the_unet_cannot_halve_four_times():
    objective = build("supervised")
    with pytest.raises(DataError, match="divisible by 16") as error:
        objective.loss(batch(size=24), 0, 10)
    assert_one_line(error)


def test_mean_teacher_rejects_a_batch_without_unlabelled_images():
    objective = build("mean_teacher")
    full = batch()
    with pytest.raises(DataError, match="unlabelled_image") as error:
        objective.loss(Batch(full.labelled_image, full.label), 0, 10)
    assert_one_line(error)


@pytest.mark.parametrize("name", ["mona", "arco", "action", "isd_pretrain"])
def test_pseudo_labelling_objectives_reject_a_batch_without_strong_augment(name):
    small = {"mona": MONA_SMALL, "arco": MONA_SMALL, "action": ACTION_SMALL, "isd_pretrain": ISD_SMALL}[name]
    objective = build(name, small)
    with pytest.raises(DataError, match=f"objective '{name}': needs Batch.strong_augment") as error:
        objective.loss(without_strong_augment(batch(size=64 if name == "isd_pretrain" else 16)), 0, 10)
    assert_one_line(error)


def test_mona_rejects_an_unlabelled_batch_larger_than_the_nn_pool_at_run_time():
    objective = build("mona", {**MONA_SMALL, "contrast_weight": 0.0, "nn_pool_capacity": 2, "nn_topk": 1})
    with pytest.raises(ConfigError, match="nn_pool_capacity") as error:
        objective.loss(batch(b_u=3), 0, 10)
    assert_one_line(error)


def test_arco_full_resolution_nn_pool_rejects_a_change_of_image_size():
    objective = build("arco", {**MONA_SMALL, "contrast_weight": 0.0, "nn_pool_resolution": "full", "eqv_weight": 0.0})
    objective.loss(batch(size=16), 0, 10)  # the pool is allocated for 16 x 16 images
    with pytest.raises(DataError, match="image size changed") as error:
        objective.loss(batch(size=32), 1, 10)
    assert_one_line(error)


def test_batch_shapes_are_data_errors():
    full = batch()
    with pytest.raises(DataError, match="Batch.label") as error:
        Batch(full.labelled_image, full.label[:, :8])
    assert_one_line(error)
    with pytest.raises(DataError, match="Batch.unlabelled_image"):
        Batch(full.labelled_image, full.label, full.unlabelled_image[:, :, :8])
