"""Every profile x method resolves to a valid trial config (the paper profile included, without data)."""

import pytest

from medseg_platform.profiles import METHODS, PROFILES, method_overrides
from methods.registry import objective_config


CONTRASTIVE = ("mona", "arco_sg", "arco_sag", "action")
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


def test_paper_profile_is_the_released_setting():
    p = PROFILES["paper"]
    cfg = p.trial.replace(**method_overrides("mona", p))
    assert cfg.data.patch_size == (256, 256) and cfg.model.channels == (16, 32, 64, 128, 256)
    assert cfg.optim.max_steps == 30000 and cfg.optim.nesterov and cfg.optim.lr == 0.01
    assert cfg.objective_params["num_anchors"] == 256 and cfg.objective_params["num_negatives"] == 512
    assert cfg.pretrain[0].max_steps == 30000 and cfg.pretrain[0].objective_params["window"] == 64
    action = p.trial.replace(**method_overrides("action", p))
    assert [s.objective_params["train_decoder"] for s in action.pretrain if "train_decoder" in s.objective_params] == [False]
