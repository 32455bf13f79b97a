from pathlib import Path

import pytest

from medseg_platform.config import TrialConfig
from medseg_platform.errors import ConfigError, MedsegError
from methods.registry import OBJECTIVES


def cfg(root: Path, **overrides) -> TrialConfig:
    base = {"data.root": str(root), "data.patch_size": [32, 32], "model.channels": [4, 8, 16, 32, 64]}
    return TrialConfig.from_dict({**base, **overrides})


def test_round_trip_and_dotted_overrides(tiny_root):
    c = cfg(tiny_root, **{"optim.lr": 0.1, "objective": "mean_teacher", "objective_params": {"consistency_weight": 0.3}})
    assert c.optim.lr == 0.1 and c.data.patch_size == (32, 32)
    assert TrialConfig.from_dict(c.to_dict()) == c
    assert c.replace(**{"objective_params.rampup_steps": 5}).objective_params == {"consistency_weight": 0.3, "rampup_steps": 5}
    # a section as a dict changes the fields it names only (it used to reset the others to the paper defaults)
    d = c.replace(data={"labelled": "3"}, eval={"empty_policy": "released"})
    assert d.data.patch_size == (32, 32) and d.data.labelled == "3" and d.eval.empty_policy == "released"
    assert d.eval.val_every == c.eval.val_every and d == c.replace(**{"data.labelled": "3", "eval.empty_policy": "released"})
    c.validate()


@pytest.mark.parametrize("overrides, message", [
    # every registered objective, so that a newcomer's added method keeps this test green
    ({"objective": "mona2"}, "unknown; known objectives: " + ", ".join(sorted(OBJECTIVES))),
    ({"objective_params": {"sup_weight": -1}}, "sup_weight"),
    ({"objective_params": {"temperature": 0.1}}, "unknown SupervisedConfig keys"),
    ({"objective": "mean_teacher", "objective_params": {"ema_momentum": 1.5}}, "ema_momentum"),
    ({"data.labelled_batch": 9}, "larger than the labelled set (6 slices of 1 patient(s))"),
    ({"data.labelled": "0"}, "0 labelled patients"),
    ({"data.labelled_seed": 5}, "data.labelled_seed 5: only the 'random' labelled_strategy draws patients"),  # a dead knob
    ({"eval.val_cases": 99}, "eval.val_cases 99: "),  # silently capped at the val cases there are, under a new key
    ({"objective": "mean_teacher", "data.labelled": "100%"}, "labels every training patient of "),  # found only in the trial
    ({"pretrain": [{"objective": "isd_pretrain", "unlabelled_batch": 3, "objective_params": {"image_size": 32, "window": 16}}],
      "data.labelled": "100%"},
     "so objective 'isd_pretrain' has no unlabelled images; label fewer patients (--labelled) or train supervised"),
    ({"data.patch_size": [30, 30]}, "multiples of 16"),
    ({"data.patch_size": [32, 64]}, "data.patch_size (32, 64): must be square"),  # used to fail inside every trial
    ({"data.patch_size": [16, 16], "pretrain": [{"objective": "isd_pretrain", "unlabelled_batch": 3, "objective_params":
      {"image_size": 16, "window": 4}}]}, "the contrastive methods need data.patch_size of at least 32, not 16"),
    ({"objective": "mona", "objective_params": {"nn_pool_resolution": 1000}}, "nn_pool_resolution 1000: larger than the patch "
     "side 32"),  # its pool of 1000 x 1000 rows per entry exhausted the memory
    # refused at the objective's first step, after its pretraining, before these checks: MONA's NN pool must hold one
    # unlabelled batch while L_nn is on; ISD pretraining as the trial's own objective needs the patch side and a queue
    # that a batch divides, as its stages do
    ({"objective": "mona", "objective_params": {"nn_pool_capacity": 2, "nn_topk": 1}, "data.unlabelled_batch": 3},
     "objective_params.nn_pool_capacity 2 (objective mona): smaller than the unlabelled batch 3"),
    ({"objective": "isd_pretrain", "objective_params": {"image_size": 256}}, "objective_params.image_size 256 (objective "
     "isd_pretrain): must equal the patch side 32"),
    ({"objective": "isd_pretrain", "objective_params": {"image_size": 32, "window": 8, "stride": 4, "queue_size": 35}},
     "objective_params.queue_size 35 (objective isd_pretrain): must be a multiple of the batch"),
    ({"data.patch_size": ["32", "32"]}, "sizes and widths must be whole numbers"),
    ({"model.channels": [4, 8, 16, 32, 64.5]}, "sizes and widths must be whole numbers"),
    ({"optim.lr": 0}, "optim.lr 0.0: must be a finite number > 0"),
    ({"optim.lr": float("nan")}, "optim.lr nan: must be a finite number > 0"),
    ({"optim.lr": float("inf")}, "optim.lr inf: must be a finite number > 0"),
    ({"optim.max_steps": float("nan")}, "config.optim.max_steps: expected a whole number, got nan"),
    ({"optim.momentum": 1.0}, "optim.momentum 1.0: must be in "),
    ({"seed": -1}, "seed -1: must be in "),
    ({"seed": 2**32}, "seed 4294967296: must be in "),
    ({"threads": 0}, "threads 0: must be 1 to 4096"),
    ({"eval.empty_policy": "zero"}, "choose 'nan' or 'released'"),
    # the weak view's two branches are exclusive: a sum above 1 used to pass here and fail every trial at its first step
    ({"data.weak_rot90_flip_p": 0.8, "data.weak_rotate_p": 0.5}, r"data.weak_rot90_flip_p 0.8 \+ data.weak_rotate_p 0.5: more than 1"),
    # a 16-pixel patch leaves the UNet a 1x1 bottleneck: a pass of one image failed mid-training in BatchNorm (the ACTION
    # review); a batch no pass reads alone (supervised's unlabelled) is not refused
    ({"data.patch_size": [16, 16], "data.labelled_batch": 1}, "data.labelled_batch 1 with data.patch_size 16: the UNet's "
     "bottleneck is 1x1"),
    ({"data.patch_size": [16, 16], "objective": "mean_teacher", "data.unlabelled_batch": 1}, "data.unlabelled_batch 1 with "
     "data.patch_size 16"),
    ({"data.patch_size": [16, 16], "pretrain": [{"objective": "supervised", "labelled_batch": 1, "unlabelled_batch": 0}]},
     r"pretrain\[0\].labelled_batch 1 with data.patch_size 16"),
    # a stage's batch larger than the labelled set trained (drawn with replacement) where fine-tuning's was refused
    ({"pretrain": [{"objective": "supervised", "labelled_batch": 99, "unlabelled_batch": 0}]},
     r"pretrain\[0\].labelled_batch 99: larger than the labelled set ("),
])
def test_bad_values_are_one_line_errors(tiny_root, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        cfg(tiny_root, **{"data.labelled": "1", **overrides}).validate()
    assert "\n" not in str(info.value)


def test_a_batch_of_one_is_valid_where_the_bottleneck_has_more_than_one_pixel(tiny_root):
    cfg(tiny_root, **{"data.labelled": "1", "data.patch_size": [32, 32], "data.labelled_batch": 1}).validate()
    cfg(tiny_root, **{"data.labelled": "1", "data.patch_size": [16, 16], "data.unlabelled_batch": 1}).validate()  # supervised


def test_a_small_nn_pool_is_valid_without_l_nn(tiny_root):
    """A pool smaller than the unlabelled batch is refused while L_nn reads it, and valid with nn_weight 0."""
    params = {"nn_pool_capacity": 2, "nn_topk": 1, "nn_weight": 0.0}
    cfg(tiny_root, **{"data.labelled": "1", "objective": "mona", "data.unlabelled_batch": 3, "objective_params": params}).validate()
    with pytest.raises(ConfigError, match=r"nn_pool_capacity 2.*smaller than the unlabelled batch"):
        cfg(tiny_root, **{"data.labelled": "1", "objective": "mona", "data.unlabelled_batch": 3,
                          "objective_params": {**params, "nn_weight": 1.0}}).validate()


def test_missing_data_root_and_unknown_keys(tmp_path):
    with pytest.raises(MedsegError, match="does not exist"):
        cfg(tmp_path / "missing").validate()
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['lr'\]"):
        TrialConfig.from_dict({"data": {"lr": 1}})


def test_a_dotted_key_through_a_value_is_a_config_error(tiny_root):
    """``objective`` is a name, not a section: ``objective.x`` used to raise a bare TypeError."""
    c = cfg(tiny_root, **{"objective": "mean_teacher"})
    with pytest.raises(ConfigError, match=r"objective.consistency_weight: objective holds a value \('mean_teacher'\), not keys; "
                                          "an objective's parameters are objective_params.<name>"):
        c.replace(**{"objective.consistency_weight": 0.3})
    for values in ({"seed.x": 1, "seed": 3}, {"seed": 3, "seed.x": 1}):  # the same message in either order
        with pytest.raises(ConfigError, match=r"seed.x: seed holds a value \(3\), not keys"):
            TrialConfig.from_dict(values)
    with pytest.raises(ConfigError, match=r"config.optim: a section; give a dict of its keys or set them as optim.<name>, not 0.1"):
        TrialConfig.from_dict({"optim": 0.1})
    with pytest.raises(ConfigError, match=r"config.objective: expected a name, got \{'x': 1\}"):
        TrialConfig.from_dict({"objective.x": 1})
    # a dotted key overrides the whole value whatever the order it is given in
    assert TrialConfig.from_dict({"optim.lr": 0.3, "optim": {"lr": 0.2, "momentum": 0.5}}).optim.lr == 0.3


@pytest.mark.parametrize("values, message", [
    ({"pretrain": ["isd_pretrain"]},  # used to list the letters of the name as unknown keys
     r"config.pretrain\[0\]: expected a stage, a dict like \{'objective': 'isd_pretrain', 'max_steps': 40\}, got 'isd_pretrain'"),
    ({"data.labelled_seed": "7"}, r"config.data.labelled_seed: expected a whole number or None, got '7'"),  # was a TypeError
    ({"data.labelled_seed": 2.5}, r"config.data.labelled_seed: expected a whole number or None, got 2.5"),
    ({"objective_params": "x"}, r"config.objective_params: expected a dict of names to values, got 'x'"),
    ({"objective_params": [1]}, r"config.objective_params: expected a dict of names to values, got \[1\]"),  # was a TypeError
    ({"pretrain": [{"objective_params": "y"}]}, r"config.pretrain\[0\].objective_params: expected a dict of names to values, got 'y'"),
])
def test_a_value_of_the_wrong_kind_names_its_key(values, message):
    with pytest.raises(ConfigError, match=message) as info:
        TrialConfig.from_dict(values)
    assert "\n" not in str(info.value)


def test_labelled_seed_is_a_seed_or_none(tiny_root):
    assert cfg(tiny_root, **{"data.labelled_seed": None}).data.labelled_seed is None
    c = cfg(tiny_root, **{"data.labelled_seed": 4})
    assert c.data.labelled_seed == 4 and type(c.data.labelled_seed) is int
    with pytest.raises(ConfigError, match=r"data.labelled_seed -3: must be >= 0 \(or None: the trial seed\)"):
        cfg(tiny_root, **{"data.labelled_seed": -3}).validate(check_data=False)


@pytest.mark.parametrize("text, expected", [("32", 32), ("32.0", 32), ("1e3", 1000), (" 7 ", 7)])
def test_a_whole_number_field_takes_a_whole_number_written_as_a_real(text, expected):
    """`--set objective_params.num_negatives=32.0` said "expected a whole number" (a known item)."""
    from medseg_platform.overrides import parse_value

    assert parse_value("optim.max_steps", text, int) == expected and isinstance(parse_value("k", text, int), int)


@pytest.mark.parametrize("text", ["2.5", "nan", "inf", "x", "", "1_000", "\u0661\u0662"])  # separators and other digits:
def test_a_whole_number_field_refuses_other_values(text):  # Python's int() reads them (a known item)
    from medseg_platform.overrides import parse_value

    with pytest.raises(ConfigError, match=f"--set optim.max_steps={text}: expected a whole number"):
        parse_value("optim.max_steps", text, int)


def test_a_number_or_tuple_written_loosely_is_refused():
    """Known items: float() read "1_0.5" and other scripts' digits; "48,,48" was read as 48,48."""
    from medseg_platform.overrides import parse_value

    for text in ("1_0.5", "\u0661.5"):
        with pytest.raises(ConfigError, match=f"--set optim.lr={text}: expected a number"):
            parse_value("optim.lr", text, float)
    with pytest.raises(ConfigError, match=r"--set data.patch_size=48,,48: an empty value between commas"):
        parse_value("data.patch_size", "48,,48", tuple[int, int])
    assert parse_value("data.patch_size", "(48, 48)", tuple[int, int]) == (48, 48) and parse_value("optim.lr", " 1e-2 ", float) == 0.01
    # a trailing comma is one, as Python writes tuples (the diff review: it was refused as an empty value)
    assert parse_value("model.channels", "4,8,16,32,64,", tuple[int, ...]) == parse_value("model.channels", "[4, 8, 16, 32, 64,]",
                                                                                             tuple[int, ...]) == (4, 8, 16, 32, 64)


def test_a_config_error_is_named_as_the_set_of_the_key_it_is_about_only():
    """The diff review: a config file's "optim.lr_step 'bogus'" was named as the --set of optim.lr (a substring)."""
    from medseg_platform.overrides import named_by_set

    lr_step = ConfigError("optim.lr_step 'bogus': choose 'released' or 'aligned'")
    assert named_by_set(lr_step, ["optim.lr"]) is lr_step
    assert str(named_by_set(lr_step, ["optim.lr", "optim.lr_step"])) == "--set optim.lr_step 'bogus': choose 'released' or 'aligned'"
    inside = ConfigError("the trials need data.labelled 3 and data.labelled_seed 1")
    assert str(named_by_set(inside, ["data.labelled"])) == f"--set data.labelled: {inside}"
    assert named_by_set(ConfigError("data.labelled_seed 7: only with random"), ["data.labelled"]).args[0].startswith("data.")


def test_an_unknown_up_path_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match=r"^model\.upsample 'nearest': choose one of 'bilinear', 'transposed' \('bilinear' as released\)$"):
        TrialConfig.from_dict({"model": {"upsample": "nearest"}}).validate(check_data=False)


def test_config_values_the_config_review_found_accepted_or_crashing(tmp_path):
    """The config review: a null or a word among the widths was an int() traceback; a huge threads value overflowed in
    torch; a number as data.root was a Path() traceback; a stage took NaN and inf rates; -0.0 gave the same training
    another trial key; a config file's repeated key was kept last silently, and a byte-order mark was invalid JSON."""
    import json

    import pytest

    from medseg_platform.config import TrialConfig
    from medseg_platform.errors import ConfigError
    from medseg_platform.results import trial_key
    from medseg_platform.train_cli import profile_of, read_config_file

    for values, message in (({"model": {"channels": [None, 8, 16, 32, 64]}}, "sizes and widths must be whole numbers"),
                            ({"data": {"patch_size": [{"a": 1}, 48]}}, "sizes and widths must be whole numbers"),
                            ({"threads": 10**30}, "threads 1000000000000000000000000000000: must be 1 to 4096"),
                            ({"pretrain": [{"objective": "isd_pretrain", "lr": float("inf")}], "objective": "mona"},
                             r"pretrain\[0\]: lr must be a finite number > 0"),
                            ({"pretrain": [{"objective": "isd_pretrain", "weight_decay": float("nan")}], "objective": "mona"},
                             r"pretrain\[0\]: lr must be a finite number > 0, weight_decay and poly_power finite")):
        with pytest.raises(ConfigError, match=message):
            TrialConfig.from_dict(values).validate(check_data=False)
    with pytest.raises(ConfigError, match=r"config.data.root: expected a name, got \[5\]"):
        TrialConfig.from_dict({"data": {"root": [5]}})
    assert TrialConfig.from_dict({"data": {"root": 5, "labelled": 3}}).data.labelled == "3"  # numbers as text
    plain = trial_key(TrialConfig.from_dict({"optim": {"weight_decay": 0.0}, "objective_params": {"w": 0.0}}).to_dict())
    assert trial_key(TrialConfig.from_dict({"optim": {"weight_decay": -0.0}, "objective_params": {"w": -0.0}}).to_dict()) == plain
    repeated = tmp_path / "dup.json"
    repeated.write_text('{"optim": {"lr": 0.02}, "optim": {"lr": 0.5}}')
    with pytest.raises(ConfigError, match=r"key\(s\) 'optim' given twice in one object"):
        read_config_file(repeated)
    marked = tmp_path / "bom.json"
    marked.write_bytes(b"\xef\xbb\xbf" + json.dumps({"optim": {"lr": 0.02}}).encode())
    assert read_config_file(marked)["optim"]["lr"] == 0.02
    assert profile_of({"data": {"patch_size": 48}}) == "quick" and profile_of({"data": [1]}) == "quick"  # no TypeError
