"""Slice-wise volume prediction with a hand-built pixel-wise model whose output is known exactly."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from scipy import ndimage

from medseg_platform.config import EvalConfig
from medseg_platform.errors import ConfigError, DataError
from medseg_platform.evaluation.predict import predict_volume

CENTRES = (0.1, 0.4, 0.6, 0.9)


def classify(image: np.ndarray) -> np.ndarray:
    """What the model computes per pixel: index of the nearest class centre (uint8)."""
    return np.abs(image[..., None] - np.asarray(CENTRES)).argmin(axis=-1).astype(np.uint8)


class ThresholdModel(torch.nn.Module):
    """Pixel-wise model: logits_c = -(x - centre_c)^2; records the input sizes and modes it saw."""

    def __init__(self, output: str = "tensor"):
        super().__init__()
        self.centres = torch.nn.Parameter(torch.tensor(CENTRES).view(1, -1, 1, 1))
        self.output = output
        self.seen: list[tuple] = []

    def forward(self, x):
        self.seen.append((tuple(x.shape), self.training, torch.is_grad_enabled()))
        logits = -((x - self.centres) ** 2)
        if self.output == "tuple":
            return logits, torch.zeros(1)
        if self.output == "dict":
            return {"features": torch.zeros(1), "logits": logits}
        return logits


def volume(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(np.float32)


@pytest.mark.parametrize("output", ["tensor", "tuple", "dict"])
def test_round_trip_is_exact_when_native_fits_the_patch(output):
    image = volume((5, 37, 53))  # non-square, smaller than the patch
    model = ThresholdModel(output).train()
    pred = predict_volume(model, image, patch_size=(64, 60), batch_size=2, resize="nearest-exact")
    assert pred.dtype == np.uint8 and pred.shape == image.shape
    np.testing.assert_array_equal(pred, classify(image))
    # batches of 2, 2, 1 at patch size, in eval mode without gradients; the train mode comes back
    assert [s for s, _, _ in model.seen] == [(2, 1, 64, 60), (2, 1, 64, 60), (1, 1, 64, 60)]
    assert all(not training and not grad for _, training, grad in model.seen)
    assert model.training


def test_each_slice_is_resized_down_and_back_by_nearest_neighbour():
    image = volume((3, 90, 41), seed=1)  # taller than the patch: information is lost, positions are not
    pred = predict_volume(ThresholdModel(), image, patch_size=(32, 48), batch_size=8, resize="nearest-exact")
    # expected from torch's documented nearest-exact rule, source index floor((i + 0.5) * in / out)
    def index(n_out, n_in):
        return np.minimum(np.floor((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(int), n_in - 1)

    rows = index(32, 90)[index(90, 32)]
    cols = index(48, 41)[index(41, 48)]
    np.testing.assert_array_equal(pred, classify(image[:, rows][:, :, cols]))
    # a batch size that does not divide D gives the same volume
    np.testing.assert_array_equal(pred, predict_volume(ThresholdModel(), image, patch_size=(32, 48), batch_size=2,
                                                       resize="nearest-exact"))


def test_legacy_nearest_and_released_zoom_modes():
    image = volume((2, 30, 45), seed=2)
    legacy = predict_volume(ThresholdModel(), image, patch_size=(64, 64), resize="nearest")
    rows = np.floor(np.floor(np.arange(30) * 64 / 30) * 30 / 64).astype(int)
    cols = np.floor(np.floor(np.arange(45) * 64 / 45) * 45 / 64).astype(int)
    np.testing.assert_array_equal(legacy, classify(image[:, rows][:, :, cols]))
    assert not np.array_equal(legacy, classify(image))  # the legacy mode shifts some pixels by one
    # "zoom" reproduces the released test_2D.py loop exactly
    zoomed = predict_volume(ThresholdModel(), image, patch_size=(64, 64), resize="zoom")
    expected = np.stack([
        ndimage.zoom(classify(ndimage.zoom(s, (64 / 30, 64 / 45), order=0)), (30 / 64, 45 / 64), order=0) for s in image
    ])
    np.testing.assert_array_equal(zoomed, expected)
    # the function's default is the trials' (eval.resize): a direct call used to predict with another resize
    np.testing.assert_array_equal(predict_volume(ThresholdModel(), image, patch_size=(64, 64)), zoomed)
    assert inspect.signature(predict_volume).parameters["resize"].default == EvalConfig().resize


def test_bad_inputs():
    model = ThresholdModel()
    with pytest.raises(DataError, match="3-D"):
        predict_volume(model, np.zeros((4, 4), np.float32))
    with pytest.raises(DataError, match="finite"):
        predict_volume(model, np.full((1, 4, 4), np.nan, np.float32))
    with pytest.raises(ConfigError, match="resize"):
        predict_volume(model, np.zeros((1, 4, 4), np.float32), resize="bilinear")

    class Bad(torch.nn.Module):
        def __init__(self, out):
            super().__init__()
            self.out = out

        def forward(self, x):
            return self.out(x)

    with pytest.raises(ConfigError, match="model output shape"):
        predict_volume(Bad(lambda x: x[:, :, :4]), np.zeros((1, 8, 8), np.float32), patch_size=(8, 8))
    with pytest.raises(ConfigError, match="keys \\['out'\\]"):
        predict_volume(Bad(lambda x: {"out": x}), np.zeros((1, 8, 8), np.float32), patch_size=(8, 8))


def test_predicting_gives_each_module_its_own_mode_back():
    """The evaluation review: the model's mode was restored with ``model.train(was_training)``, which set a BatchNorm
    kept in eval mode inside a training model back to training (predict_volume and engine.evaluate.eval_mode)."""
    from medseg_platform.engine.evaluate import eval_mode

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 1), torch.nn.BatchNorm2d(4))
    model.train()
    model[1].eval()
    predict_volume(model, np.zeros((2, 20, 30), np.float32), (32, 32))
    assert model.training and model[0].training and not model[1].training
    with eval_mode(model):
        assert not any(module.training for module in model.modules())
    assert model.training and model[0].training and not model[1].training
