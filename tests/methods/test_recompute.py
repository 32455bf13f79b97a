"""Bank negatives are gathered again in backward instead of being kept by autograd (methods/recompute.py)."""

from __future__ import annotations

import contextlib
import gc
import weakref

import pytest
import torch

from methods.contrast import pixel_info_nce
from methods.recompute import rebuilt_in_backward
from tests.methods.test_mona import make, shape_batch


def _negatives() -> torch.Tensor:
    return torch.randn(6, 10, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def test_autograd_keeps_no_reference_and_backward_gets_the_same_gradient():
    anchors = torch.randn(6, 8, dtype=torch.float64, requires_grad=True)
    positive = torch.randn(8, dtype=torch.float64)
    expected = torch.autograd.grad(pixel_info_nce(anchors, positive, _negatives(), 0.5), anchors)[0]

    calls = []

    def rebuild():
        calls.append(1)
        return _negatives()

    negatives = _negatives()
    with rebuilt_in_backward(negatives, rebuild):
        loss = pixel_info_nce(anchors, positive, negatives, 0.5)
    alive = weakref.ref(negatives)
    del negatives
    gc.collect()
    assert alive() is None, "the graph still holds the negatives"
    got = torch.autograd.grad(loss, anchors)[0]
    assert calls == [1]
    assert torch.equal(got, expected)


def test_without_the_block_the_graph_holds_them():
    """The check above can fail: a plain call keeps the negatives alive until backward."""
    anchors = torch.randn(6, 8, dtype=torch.float64, requires_grad=True)
    negatives = _negatives()
    loss = pixel_info_nce(anchors, torch.randn(8, dtype=torch.float64), negatives, 0.5)
    alive = weakref.ref(negatives)
    del negatives
    gc.collect()
    assert alive() is not None
    loss.backward()


def test_mona_gradients_are_unchanged_by_regathering_the_bank_negatives(monkeypatch):
    grads = []
    for regather in (True, False):
        if not regather:
            monkeypatch.setattr("methods.u2pl.rebuilt_in_backward", lambda tensor, rebuild: contextlib.nullcontext())
        objective = make()
        torch.manual_seed(5)
        out = objective.loss(shape_batch(torch.Generator().manual_seed(0)), 3, 10)
        assert float(out.terms["contrast"]) != 0
        out.total.backward()
        grads.append({name: p.grad.clone() for name, p in objective.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        assert torch.equal(grads[0][name], grads[1][name]), name


def test_a_graph_that_is_never_backpropagated_is_freed():
    """Tensors the block does not rebuild are stored detached: an op's saved output kept with its grad_fn
    would form a cycle the collector cannot break, and a loss dropped without backward (an exception between
    the loss and backward) would keep its whole graph alive."""
    def run(block: bool) -> bool:
        leaf = torch.randn(6, 8, dtype=torch.float64, requires_grad=True)
        anchors = leaf * 2.0
        negatives = _negatives()
        with rebuilt_in_backward(negatives, _negatives) if block else contextlib.nullcontext():
            loss = pixel_info_nce(anchors, torch.randn(8, dtype=torch.float64), negatives, 0.5)
        alive = weakref.ref(anchors)
        del loss, anchors
        gc.collect()
        return alive() is not None

    assert not run(block=False)  # the reference: a plain graph is freed with its loss
    assert not run(block=True)


def test_backward_after_the_banks_changed_is_an_error_not_other_gradients():
    """The negatives are gathered again in backward, so a bank written in between (a second loss before the
    first one's backward) would silently change the gradient; the regather checks the bank's write count."""
    objective = make()
    torch.manual_seed(5)
    first = objective.loss(shape_batch(torch.Generator().manual_seed(0)), 3, 10)
    assert float(first.terms["contrast"]) != 0
    objective.loss(shape_batch(torch.Generator().manual_seed(1)), 4, 10)  # enqueues into the banks
    with pytest.raises(RuntimeError, match="memory bank changed between this loss and its backward"):
        first.total.backward()
