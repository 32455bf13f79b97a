"""Data-parallel training across processes: the rank context and the collectives the engine uses.

Every rank starts from rank 0's weights (:func:`broadcast_state`), draws its own batches (the data RNG is seeded
by rank, :func:`medseg_platform.engine.loop.data_generator`) and averages gradients with one coalesced
all-reduce per step (:func:`average_gradients`), so the replicas stay identical: what DDP does, without wrapping
the student (objectives keep their plain ``state_dict`` keys). The process group (gloo on CPU, NCCL on GPU) is set
up by the caller (Ray Train in :mod:`medseg_platform.study.distributed`, a test's ``init_process_group``).

``tests/test_ddp.py`` checks that two ranks on batches B_1 and B_2 end with the parameters of one process trained
on B_1 + B_2, before any broadcast, and that they do not without :func:`average_gradients`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DistContext:
    """This process's place in a data-parallel trial of ``world_size`` processes.

    Validation, test and checkpoints happen on rank 0 (:attr:`is_main`).
    """

    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def broadcast_state(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and normalisation statistics to every rank.

    Only parameters and batch-norm buffers: other buffers (memory banks, queues, NN pools) hold each
    rank's own data with bookkeeping that a raw copy would leave inconsistent, as in DDP where every
    replica keeps its own.
    """
    import torch.distributed as dist

    norm_buffers = [buf for sub in module.modules() if isinstance(sub, torch.nn.modules.batchnorm._NormBase)
                    for buf in sub.buffers(recurse=False)]
    for tensor in list(module.parameters()) + norm_buffers:
        dist.broadcast(tensor.data, src=0)


def average_gradients(params: list[torch.nn.Parameter], world_size: int) -> None:
    """All-reduce the mean gradient of ``params`` in one flat buffer (gradients of None count as zero).

    A parameter that no rank gave a gradient keeps ``grad=None`` (as in single-process training); one that only
    some ranks touched gets the mean with zeros for the others. Reading which ones costs one sync per parameter
    without a local gradient.
    """
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    has_grad = torch.tensor([p.grad is not None for p in params], dtype=grads[0].dtype, device=grads[0].device)
    flat = torch.cat([g.reshape(-1) for g in grads] + [has_grad])
    dist.all_reduce(flat)
    anyone = flat[-len(params):] > 0
    flat = flat[: -len(params)] / world_size
    offset = 0
    for i, (p, g) in enumerate(zip(params, grads)):
        n = g.numel()
        if p.grad is None:
            p.grad = flat[offset:offset + n].view_as(p).clone() if bool(anyone[i]) else None
        else:
            p.grad.copy_(flat[offset:offset + n].view_as(p))
        offset += n


def gather_scalar(value: torch.Tensor) -> list[float]:
    """The scalar ``value`` of every rank, in rank order."""
    import torch.distributed as dist

    out = [torch.zeros_like(value) for _ in range(dist.get_world_size())]
    dist.all_gather(out, value.detach())
    return [float(v) for v in out]


def replica_max_difference(module: torch.nn.Module) -> float:
    """Largest absolute difference of any parameter between any rank and rank 0 (0.0 = in sync), on every rank."""
    import torch.distributed as dist

    flat = torch.cat([p.detach().reshape(-1) for p in module.parameters()])
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    diff = (flat - reference).abs().max()
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return float(diff)


def meet(dist: DistContext | None, device: torch.device) -> None:
    """Return on every rank only once every rank has called it (an all-reduce, read on the host). A broadcast does not do
    for rank 0: its root may return before the others arrive (NCCL), and rank 0 must not write a checkpoint that names
    their state files before those are on disk (:func:`medseg_platform.engine.checkpoint.save_rank_state`)."""
    if dist is None:
        return
    import torch.distributed as tdist

    value = torch.ones(1, device=device)
    tdist.all_reduce(value)
    value.item()


def agree(flag: bool, dist: DistContext | None, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every rank (the tensor lives on the training device: NCCL has no CPU backend)."""
    if dist is None:
        return flag
    import torch.distributed as tdist

    value = torch.tensor([1 if flag else 0], device=device)
    tdist.broadcast(value, src=0)
    return bool(value.item())
