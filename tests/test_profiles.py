"""Every profile x method resolves to a valid trial config (the paper profile included, without data)."""

import pytest

from medseg_platform.errors import MedsegError
from medseg_platform.profiles import PROFILES
from medseg_platform.protocol import RELEASED_EVALUATION, protocol_overrides
from medseg_platform.recipes import CONTRASTIVE_METHODS as CONTRASTIVE
from medseg_platform.recipes import METHODS, method_overrides
from methods.registry import objective_config
from tests.data.test_splits import ACDC_SLICES, SSL4MIS_SLICES

ROWS = [(m, False) for m in METHODS] + [(m, True) for m in CONTRASTIVE]


@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.parametrize("method, without_contrast", ROWS)
def test_profile_method_configs_validate(profile, method, without_contrast):
    p = PROFILES[profile]
    cfg = p.trial.replace(**method_overrides(method, p, without_contrast))
    cfg.validate(check_data=False)
    for stage in cfg.pretrain:
        params = objective_config(stage.objective, dict(stage.objective_params))
        assert params.image_size == cfg.data.patch_size[0]  # ISD windows are laid over the training patch
    if without_contrast:
        params = dict(cfg.objective_params)
        assert params.get("contrast_weight", params.get("anco_weight")) == 0.0


@pytest.mark.parametrize("method", [m for m in METHODS if m not in CONTRASTIVE])
def test_a_row_without_contrast_of_a_method_without_one_is_an_error(method):
    """The newcomer probe: ``without_contrast=True`` was ignored for the baselines, giving the method's own row."""
    with pytest.raises(MedsegError, match=rf"method '{method}': has no contrast term to leave out"):
        method_overrides(method, PROFILES["quick"], without_contrast=True)
    # a method the recipes do not know as contrastive (a newly added one) is refused too, before its recipe is read
    with pytest.raises(MedsegError, match=r"method 'entmin': has no contrast term to leave out"):
        method_overrides("entmin", PROFILES["quick"], without_contrast=True)


def test_paper_profile_is_the_released_setting():
    p = PROFILES["paper"]
    cfg = p.trial.replace(**method_overrides("mona", p))
    assert cfg.data.patch_size == (256, 256) and cfg.model.channels == (16, 32, 64, 128, 256)
    assert cfg.optim.max_steps == 30000 and cfg.optim.nesterov and cfg.optim.lr == 0.01
    assert cfg.objective_params["num_anchors"] == 256 and cfg.objective_params["num_negatives"] == 512
    assert cfg.pretrain[0].max_steps == 30000 and cfg.pretrain[0].objective_params["window"] == 64
    action = p.trial.replace(**method_overrides("action", p))
    assert [s.objective_params["train_decoder"] for s in action.pretrain if "train_decoder" in s.objective_params] == [False]


def test_mona_and_arco_rows_take_the_alpha_epoch_from_the_labelled_set():
    # 0 = the trial's own floor(N_u / B_u), filled in by the engine (as released); baselines have no such field
    for method in ("mona", "arco_sg", "arco_sag"):
        assert method_overrides(method, PROFILES["quick"])["objective_params"]["steps_per_epoch"] == 0
    for method in ("supervised", "mean_teacher", "action"):
        assert "steps_per_epoch" not in method_overrides(method, PROFILES["quick"])["objective_params"]


def _root(folder, slices):
    """A dataset root holding only its lists (all that --protocol reads)."""
    folder.mkdir()
    (folder / "train_slices.list").write_text("\n".join(slices) + "\n")
    for name in ("val.list", "test.list"):
        (folder / name).write_text("patient101_frame01\n")
    return folder


def test_protocols_resolve_to_their_config_keys(tmp_path):
    acdc, other = _root(tmp_path / "acdc", SSL4MIS_SLICES), _root(tmp_path / "other", ACDC_SLICES)
    assert protocol_overrides("corrected", acdc) == {} == protocol_overrides("corrected", tmp_path / "not-read")
    assert RELEASED_EVALUATION == {"eval.selection": "final", "eval.empty_policy": "released", "eval.distance_units": "voxel"}
    assert protocol_overrides("released", acdc) == {**RELEASED_EVALUATION, "data.labelled_strategy": "released_slices"}
    assert protocol_overrides("released", other) == RELEASED_EVALUATION  # no released slice counts: whole patients
    cfg = PROFILES["paper"].trial.replace(**protocol_overrides("released", acdc))
    cfg.validate(check_data=False)
    with pytest.raises(MedsegError, match="eval.distance_units 'px': choose 'mm' or 'voxel'"):
        cfg.replace(**{"eval.distance_units": "px"}).validate(check_data=False)
    with pytest.raises(MedsegError, match="--protocol 'paper': unknown"):
        protocol_overrides("paper", acdc)
