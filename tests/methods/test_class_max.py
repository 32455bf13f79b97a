"""``methods.class_max``: torch.max / torch.argmax over the class axis, the same numbers from faster reductions."""

from __future__ import annotations

import pytest
import torch

from methods.class_max import class_argmax, class_max


@pytest.mark.parametrize("shape", [(2, 4, 5, 7), (3, 2, 6), (1, 9, 3, 4, 2), (4, 1, 3, 3)])
def test_values_and_first_indices_equal_torch_max(shape):
    generator = torch.Generator().manual_seed(0)
    for scores in (torch.randn(*shape, generator=generator),  # distinct values
                   torch.randint(0, 3, shape, generator=generator).float(),  # many ties: the first maximal class wins
                   torch.zeros(shape), torch.randn(*shape, generator=generator).double()):
        values, index = class_max(scores)
        expected_values, expected_index = torch.max(scores, dim=1)
        assert torch.equal(values, expected_values) and torch.equal(index, expected_index) and index.dtype == torch.int64
        assert torch.equal(class_argmax(scores), scores.argmax(dim=1))


def test_nan_and_signed_zero_follow_torch():
    scores = torch.randn(2, 4, 3, 3)
    scores[0, 2, 1, 1] = float("nan")  # torch reports the NaN's class
    scores[1, :, 0, 0] = torch.tensor([-0.0, 0.0, -1.0, -0.0])  # -0.0 == 0.0: the first of them
    assert torch.equal(class_max(scores)[1], torch.max(scores, dim=1)[1])
    assert torch.equal(class_argmax(scores), scores.argmax(dim=1))


def test_integer_scores_use_torch_max():
    scores = torch.randint(0, 5, (2, 3, 4))
    assert torch.equal(class_max(scores)[1], torch.max(scores, dim=1)[1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_scores(dtype):
    scores = torch.randint(-2, 3, (3, 4, 5, 6)).to(dtype)  # ties in every pixel's classes
    assert torch.equal(class_max(scores)[1], torch.max(scores, dim=1)[1])


def test_non_contiguous_empty_and_wide_inputs():
    base = torch.randn(5, 6, 7, 4)
    for scores in (base.permute(0, 3, 1, 2), base.permute(0, 3, 1, 2)[:, :, ::2], torch.randn(0, 4, 3, 3),
                   torch.randn(2, 200, 3, 3), torch.randn(2, 1, 3, 3)):
        assert torch.equal(class_max(scores)[1], torch.max(scores, dim=1)[1])
        assert torch.equal(class_argmax(scores), scores.argmax(dim=1))
