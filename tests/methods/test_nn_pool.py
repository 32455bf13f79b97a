"""The compact full-resolution NN pool (methods/nn_pool.py) holds the rows of the dense one.

The end-to-end equality (MONA trained with both storages) is in ``test_dense_equivalence.py``; these are
the pieces on hand-made data: random rows from seeds, rows rebuilt from stored pyramids and ``FE`` weights
that have moved on since, dot products and neighbour means, and the loss on both storages.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from methods.heads import MonaFeatureExtractor
from methods.mona import nn_loss
from methods.nn_pool import CompactNNPool, compact_nn_loss, random_row, random_rows

CHANNELS = (8, 4, 4)
SIZES = ((4, 4), (8, 8), (16, 16))


def _pyramid(batch: int, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, *size, generator=generator, dtype=torch.float64) for c, size in zip(CHANNELS, SIZES)]


@torch.no_grad()
def _dense_rows(fe, pyramid) -> torch.Tensor:
    return F.normalize(fe(pyramid).flatten(1), dim=1)


def _filled(capacity: int = 5):
    """A pool of 5 rows: rows 0-2 written at "step 1", rows 3-4 still random; the dense reference beside it."""
    torch.manual_seed(0)
    fe = MonaFeatureExtractor(CHANNELS).double()
    features = sum(CHANNELS) * 16 * 16
    pool = CompactNNPool(capacity, len(CHANNELS))
    pool.initialise(7, _pyramid(1, 0), fe, torch.float64)
    dense = random_rows(7, capacity, features, torch.device("cpu"), torch.float64)
    written = _pyramid(3, 1)
    pool.write(torch.tensor([0, 1, 2]), written, fe)
    dense[:3] = _dense_rows(fe, written)
    with torch.no_grad():  # FE moves on (an EMA step): the stored rows must keep the weights of their step
        for p in fe.parameters():
            p.mul_(0.5).add_(1.0)
    return pool, dense, fe, features


def test_random_rows_come_from_their_own_seeds_and_leave_the_global_rng_alone():
    state = torch.get_rng_state()
    rows = random_rows(11, 3, 50, torch.device("cpu"), torch.float64)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(rows[2], random_row(13, 50, torch.device("cpu"), torch.float64))
    torch.testing.assert_close(rows.norm(dim=1), torch.ones(3, dtype=torch.float64))
    assert not torch.equal(rows[0], rows[1])


def test_compact_rows_equal_the_dense_pool_built_with_the_weights_of_their_step():
    pool, dense, fe, features = _filled()
    torch.testing.assert_close(pool.materialise(fe, sum(CHANNELS)), dense, rtol=1e-12, atol=1e-12)
    assert pool.seeds.tolist()[:3] == [-1, -1, -1] and pool.seeds.tolist()[3:] == [10, 11]


def test_dots_and_neighbour_means_equal_the_dense_products():
    pool, dense, fe, features = _filled()
    x, y = torch.randn(2, features, dtype=torch.float64), torch.randn(3, features, dtype=torch.float64)
    dots_x, dots_y = pool.dots([x, y], fe)
    torch.testing.assert_close(dots_x, x @ dense.T, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dots_y, y @ dense.T, rtol=1e-12, atol=1e-12)
    index = torch.tensor([[0, 4, 4], [2, 1, 3]])
    torch.testing.assert_close(pool.mean_rows(index, fe, features), dense[index].mean(1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("grad", ["as_coded_none", "student_pull"])
def test_the_nn_loss_and_its_gradient_are_the_dense_pools(grad):
    pool, dense, fe, features = _filled()
    student = F.normalize(torch.randn(2, features, dtype=torch.float64), dim=1).requires_grad_(grad == "student_pull")
    teacher = F.normalize(torch.randn(2, features, dtype=torch.float64), dim=1)
    other = student.detach().clone().requires_grad_(student.requires_grad)
    expected = nn_loss(student, teacher, dense, 2, grad)
    got = compact_nn_loss(other, teacher, pool, fe, 2, grad)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert got.requires_grad == expected.requires_grad == (grad == "student_pull")
    if grad == "student_pull":
        expected.backward()
        got.backward()
        torch.testing.assert_close(other.grad, student.grad, rtol=1e-12, atol=1e-12)


def test_a_state_dict_round_trip_into_an_unallocated_pool():
    pool, dense, fe, features = _filled()
    fresh = CompactNNPool(5, len(CHANNELS))
    fresh.load_state_dict(copy.deepcopy(pool.state_dict()))
    assert torch.equal(fresh.materialise(fe, sum(CHANNELS)), pool.materialise(fe, sum(CHANNELS)))


def test_a_pyramid_of_another_size_is_a_data_error():
    from methods.errors import DataError

    pool, _, _, _ = _filled()
    with pytest.raises(DataError, match="image size changed"):
        pool.check_pyramid([level[:, :, :2, :2] for level in _pyramid(1, 0)], "MonaObjective")


def test_a_write_that_wraps_around_the_ring_overwrites_only_its_slots():
    """Slots [4, 0] (a capacity that is not a multiple of the batch): both rows rebuilt from their own pyramid
    and weights, the other written rows untouched."""
    pool, dense, fe, features = _filled()
    later = _pyramid(2, 2)
    pool.write(torch.tensor([4, 0]), later, fe)
    dense[[4, 0]] = _dense_rows(fe, later)
    torch.testing.assert_close(pool.materialise(fe, sum(CHANNELS)), dense, rtol=1e-12, atol=1e-12)
    assert pool.seeds.tolist() == [-1, -1, -1, 10, -1]


def test_a_checkpoint_of_another_capacity_is_a_config_error():
    from methods.errors import ConfigError

    pool, _, _, _ = _filled()
    with pytest.raises(ConfigError, match="holds 5 pool rows but nn_pool_capacity is 6"):
        CompactNNPool(6, len(CHANNELS)).load_state_dict(copy.deepcopy(pool.state_dict()))


def test_an_fe_with_buffers_is_refused():
    """A row rebuilt from stored weights would read a buffer (e.g. BatchNorm statistics) at its current value."""
    from methods.errors import ConfigError

    fe = MonaFeatureExtractor(CHANNELS).double()
    fe.register_buffer("running", torch.zeros(1))
    with pytest.raises(ConfigError, match="has buffers"):
        CompactNNPool(5, len(CHANNELS)).initialise(7, _pyramid(1, 0), fe, torch.float64)
