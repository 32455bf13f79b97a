"""Bank negatives are gathered again in backward instead of being kept by autograd (methods/recompute.py)."""

from __future__ import annotations

import contextlib
import gc
import weakref

import pytest
import torch

from methods.contrast import pixel_info_nce
from methods.memory_bank import ClassMemoryBank
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
    """The reference keeps each class's negatives in the graph, so it also gathers them into fresh blocks: the
    banks' reused scratch (``ClassMemoryBank.gather_transient``) is safe only with the regather."""
    grads = []
    for regather in (True, False):
        if not regather:
            monkeypatch.setattr("methods.u2pl.rebuilt_in_backward", lambda tensor, rebuild: contextlib.nullcontext())
            monkeypatch.setattr(ClassMemoryBank, "gather_transient", ClassMemoryBank.gather)
        objective = make()
        torch.manual_seed(5)
        out = objective.loss(shape_batch(torch.Generator().manual_seed(0)), 3, 10)
        assert float(out.terms["contrast"]) != 0
        out.total.backward()
        grads.append({name: p.grad.clone() for name, p in objective.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        assert torch.equal(grads[0][name], grads[1][name]), name


def _four_class_contrast():
    """A U2PL contrast in float64 where all 4 classes are contrasted -> (loss, student, info); the banks hold
    9 random keys a class."""
    from methods.mona import MonaConfig
    from methods.u2pl import u2pl_contrast_loss

    generator = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 4, (2, 6, 6), generator=generator)
    probs = torch.softmax(torch.randn(2, 4, 6, 6, generator=generator, dtype=torch.float64), dim=1)
    low, high = torch.ones(2, 6, 6, dtype=torch.bool), torch.zeros(2, 6, 6, dtype=torch.bool)
    reps = torch.randn(2, 5, 6, 6, generator=generator, dtype=torch.float64)
    banks = ClassMemoryBank(4, 5, 12, init="empty", dtype=torch.float64)
    for c in range(4):
        banks.enqueue(c, torch.randn(9, 5, generator=generator, dtype=torch.float64))
    student = reps.clone().requires_grad_(True)
    cfg = MonaConfig(num_anchors=4, num_negatives=6, valid_class_indexing="fixed")
    torch.manual_seed(0)
    loss, info = u2pl_contrast_loss(student, reps, labels, probs, low, high, 1, banks, cfg)
    assert len(info["contrasted"]) == 4
    return loss, student


def test_contrast_gradients_with_the_reused_gather_buffer_equal_fresh_blocks_kept_by_autograd(monkeypatch):
    """The 4 classes share the banks' scratch buffer (each gather overwrites the previous class's keys) and
    backward gathers each class again into it: the same loss and gradients, bit for bit, as fresh blocks that
    autograd keeps."""
    loss, student = _four_class_contrast()
    loss.backward()
    assert student.grad.abs().sum() > 0
    monkeypatch.setattr("methods.u2pl.rebuilt_in_backward", lambda tensor, rebuild: contextlib.nullcontext())
    monkeypatch.setattr(ClassMemoryBank, "gather_transient", ClassMemoryBank.gather)
    expected_loss, expected_student = _four_class_contrast()
    expected_loss.backward()
    assert torch.equal(loss, expected_loss) and torch.equal(student.grad, expected_student.grad)


def test_the_reused_gather_buffer_kept_by_autograd_is_an_error_not_other_gradients(monkeypatch):
    """Without the regather, autograd would keep a class's keys in the reused buffer, which the next class's
    gather overwrites; the buffer's version counter makes backward refuse instead of reading the wrong keys."""
    monkeypatch.setattr("methods.u2pl.rebuilt_in_backward", lambda tensor, rebuild: contextlib.nullcontext())
    loss, _ = _four_class_contrast()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


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
