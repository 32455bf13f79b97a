"""Data-parallel training with real process groups: two forked processes on gloo, no Ray.

* the collectives of ``medseg_platform.engine.ddp`` on their own (gradient averaging, state broadcast, the
  replica difference);
* the engine's training step on two ranks that see batches B_1 and B_2 ends with the parameters of one process
  trained on B_1 + B_2, compared before any broadcast, and does not when gradient averaging is switched off.

Why the equivalence is exact here: data-parallel training equals large-batch training when the loss is a mean over
samples with equal shards per rank and nothing couples the samples of a batch. The platform's supervised loss has
a batch-level Dice and the UNet has batch normalisation, both of which couple the samples (per-rank batch statistics
and Dice sums differ from the concatenated batch's by construction), so the step is checked with a mean pixel
cross-entropy objective on a small convolutional network without normalisation or dropout, in float64, with the
platform's optimiser (SGD, Nesterov momentum, weight decay) and poly learning rate.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import sys
import traceback
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medseg_platform.config import TrialConfig
from methods.objective import Batch, LossOutput, Objective

WORLD = 2
STEPS = 3
PER_RANK = 2  # slices per rank and step
SIZE = 12


def _worker(rank: int, world: int, folder: str, fn, args, group_timeout_s: float = 60.0) -> None:
    """Join the gloo group of ``folder``, run ``fn(rank, *args)`` and save its result (or the traceback)."""
    try:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        import torch.distributed as dist

        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"file://{folder}/group", rank=rank, world_size=world,
                                timeout=timedelta(seconds=group_timeout_s))
        try:
            result = fn(rank, *args)
        finally:
            dist.destroy_process_group()
        torch.save(result, f"{folder}/result{rank}.pt")
    except BaseException:
        Path(folder, f"error{rank}.txt").write_text(traceback.format_exc())
        raise


def run_ranks(tmp_path: Path, fn, *args, world: int = WORLD, group_timeout_s: float = 60.0) -> list:
    """``fn(rank, *args)`` on ``world`` new processes of one gloo group (collectives time out after ``group_timeout_s``);
    their return values in rank order."""
    folder = tmp_path / f"group-{fn.__name__}"
    folder.mkdir()
    ray = sys.modules.get("ray")  # fork is fast (the ranks inherit the imports), but Ray's threads do not survive it
    context = multiprocessing.get_context("spawn" if ray is not None and ray.is_initialized() else "fork")
    procs = [context.Process(target=_worker, args=(rank, world, str(folder), fn, args, group_timeout_s)) for rank in range(world)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
    for proc in procs:
        if proc.is_alive():  # a rank stuck in a collective: stop it (a hang fails the test, it does not block it)
            proc.kill()
            proc.join()
    errors = [p.read_text() for p in sorted(folder.glob("error*.txt"))]
    assert not errors and all(proc.exitcode == 0 for proc in procs), "\n".join(errors) or [proc.exitcode for proc in procs]
    return [torch.load(folder / f"result{rank}.pt", weights_only=False) for rank in range(world)]


# -------------------------------------------------------------------------------------- the collectives


def _average(rank: int):
    from medseg_platform.engine.ddp import average_gradients

    a, b, c = (nn.Parameter(torch.zeros(3)) for _ in range(3))
    a.grad = torch.full((3,), float(rank + 1))  # every rank: the mean of 1 and 2
    if rank == 1:
        b.grad = torch.tensor([2.0, 4.0, 6.0])  # one rank only: the mean with rank 0's zeros
    average_gradients([a, b, c], WORLD)  # c: no rank has a gradient
    return a.grad, b.grad, c.grad


def test_average_gradients_is_the_mean_over_ranks(tmp_path):
    for a, b, c in run_ranks(tmp_path, _average):
        assert torch.equal(a, torch.full((3,), 1.5))
        assert torch.equal(b, torch.tensor([1.0, 2.0, 3.0]))
        assert c is None


def _broadcast(rank: int):
    from medseg_platform.engine.ddp import broadcast_state, replica_max_difference

    torch.manual_seed(rank)  # different weights on each rank
    module = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    module.register_buffer("own", torch.full((2,), float(rank)))  # a rank's own data (e.g. a memory bank)
    module[1].running_mean.fill_(rank + 10.0)
    before = replica_max_difference(module)
    broadcast_state(module)
    return before, replica_max_difference(module), module.state_dict()


def _wait_for_stage_lock(rank: int, lock: str):
    import time

    from medseg_platform.engine.ddp import DistContext
    from medseg_platform.engine.pretrain import _exclusive

    start = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process of the machine
    waiting = Path(lock + ".waiting")  # rank 0 finds the lock held: the test's 5 s hold starts then
    with _exclusive(Path(lock), DistContext(rank, WORLD), torch.device("cpu"), on_wait=waiting.touch, poll_s=0.2):
        acquired = time.monotonic()
        return acquired - start, acquired


def test_ranks_wait_for_a_stage_lock_longer_than_the_collective_timeout(tmp_path):
    """The cluster audit: rank 0 waited for a stage another trial trained while the other ranks sat in one broadcast,
    which Ray Train's collective timeout (30 min) failed; here the timeout is 2 s and the lock is held for 5 s from
    the moment rank 0 finds it held (a hold timed from before the ranks started measured their start-up too: 3.4 s of
    wait on a spawned pair, the flaky-test review)."""
    import fcntl
    import threading
    import time

    lock = tmp_path / "stage" / ".lock"
    lock.parent.mkdir()
    released = []
    with open(lock, "a+") as other:  # another trial trains the stage
        fcntl.flock(other, fcntl.LOCK_EX)

        def hold_then_release():
            deadline = time.monotonic() + 120.0
            while not Path(f"{lock}.waiting").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(5.0)
            released.append(time.monotonic())
            fcntl.flock(other, fcntl.LOCK_UN)

        holder = threading.Thread(target=hold_then_release, daemon=True)
        holder.start()
        results = run_ranks(tmp_path, _wait_for_stage_lock, str(lock), group_timeout_s=2.0)
        holder.join(timeout=130.0)
    assert released and all(4.5 < waited < 30.0 and acquired >= released[0] for waited, acquired in results), (results, released)


def test_broadcast_state_copies_rank_0_parameters_and_norm_statistics_only(tmp_path):
    (before0, after0, state0), (before1, after1, state1) = run_ranks(tmp_path, _broadcast)
    assert before0 == before1 > 0 and after0 == after1 == 0.0  # every rank measures the same difference
    for key in ("0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"):
        assert torch.equal(state0[key], state1[key]), key
    assert torch.equal(state1["1.running_mean"], torch.full((2,), 10.0))
    assert torch.equal(state0["own"], torch.zeros(2)) and torch.equal(state1["own"], torch.ones(2))


# -------------------------------------------------------------------------------------- the training step


@dataclass(frozen=True)
class _NoConfig:
    pass


class _MeanCrossEntropy(Objective):
    """Supervised: mean pixel cross-entropy of the student on the labelled batch (a mean over samples)."""

    name = "test_mean_cross_entropy"
    config_class = _NoConfig

    def loss(self, batch: Batch, step: int, max_steps: int) -> LossOutput:
        ce = F.cross_entropy(self.student(batch.labelled_image), batch.label)
        return LossOutput(ce, {"ce": ce.detach()})


class _FixedBatches:
    """A slice bank that hands out step ``t``'s slices ``[t*WORLD*PER_RANK + offset, ... + count)`` in order."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, offset: int):
        self.images, self.labels, self.offset, self.step = images, labels, offset, 0

    def sample_indices(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        start = self.step * WORLD * PER_RANK + self.offset
        self.step += 1
        return torch.arange(start, start + batch_size)

    def batch(self, indices: torch.Tensor):
        return self.images[indices], self.labels[indices]


def _network() -> nn.Module:
    """The same initial weights on every rank (as ``seed_everything`` gives a trial's ranks), float64."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 3, 3, padding=1)).double()


def _train(rank: int | None, average: bool):
    """STEPS engine steps on this rank's shard (``rank`` None: one process on the whole batch); the parameters."""
    from medseg_platform.engine import loop as engine_loop
    from medseg_platform.engine.ddp import DistContext
    from medseg_platform.engine.training_data import TrainingData

    if not average:
        engine_loop.average_gradients = lambda params, world_size: None  # the failure the test must catch
    cfg = TrialConfig.from_dict({"data.weak_rot90_flip_p": 0.0, "data.weak_rotate_p": 0.0, "optim.lr": 0.5,
                                 "optim.max_steps": STEPS, "seed": 0})
    g = torch.Generator().manual_seed(0)  # the same data on every rank
    images = torch.rand(STEPS * WORLD * PER_RANK, 1, SIZE, SIZE, generator=g, dtype=torch.float64)
    labels = (images[:, 0] * 3).long()
    objective = _MeanCrossEntropy(_network())
    optimizer = engine_loop.make_optimizer(cfg, list(objective.trainable_parameters()))
    single = rank is None
    bank = _FixedBatches(images, labels, 0 if single else rank * PER_RANK)
    data = TrainingData(layout=None, subset=None, labelled=bank, unlabelled=None)
    loop = engine_loop.TrainLoop(cfg, objective, optimizer, data, torch.Generator(), torch.device("cpu"),
                                 None if single else DistContext(rank, WORLD), STEPS, PER_RANK * (WORLD if single else 1), 0,
                                 cfg.optim.lr, cfg.optim.poly_power, "test", lr_step=cfg.optim.lr_step)
    for step in range(STEPS):
        loop.step(step)
    return torch.cat([p.detach().reshape(-1) for p in objective.parameters()])


@pytest.mark.parametrize("average", [True, False], ids=["averaged", "not-averaged"])
def test_two_ranks_train_like_one_process_on_the_concatenated_batch(tmp_path, average):
    """Measured right after the last step: no broadcast ever ran. Without gradient averaging (the
    "not-averaged" case, average_gradients replaced by a no-op) each rank trains on its own half and both the
    replicas and the large-batch reference differ: the test can fail."""
    reference = _train(None, True)
    ranks = run_ranks(tmp_path, _train, average)
    initial = torch.cat([p.detach().reshape(-1) for p in _network().parameters()])
    assert (ranks[0] - initial).abs().max() > 1e-2  # the steps changed the weights
    if average:
        for params in ranks:
            assert torch.allclose(params, reference, rtol=0, atol=1e-12), float((params - reference).abs().max())
        assert torch.equal(ranks[0], ranks[1])
    else:
        assert (ranks[0] - reference).abs().max() > 1e-4 and (ranks[0] - ranks[1]).abs().max() > 1e-4



def _trial(rank: int, root: str, folder: str, average: bool):
    from medseg_platform.engine import DistContext, train_trial
    from medseg_platform.engine import loop as engine_loop
    from tests.test_engine import quiet, small_cfg

    if not average:
        engine_loop.average_gradients = lambda params, world_size: None
    outcome = train_trial(small_cfg(Path(root), workers=WORLD), Path(folder), log=quiet, dist=DistContext(rank, WORLD))
    return outcome.extra


@pytest.mark.parametrize("average", [True, False], ids=["averaged", "not-averaged"])
def test_trial_measures_the_replicas_before_the_final_broadcast(tiny_root, tmp_path, average):
    """train_trial's replica_param_max_diff is measured after the last step and before rank 0's state is broadcast
    (which would make it 0 by construction): 0 with gradient averaging, > 0 without."""
    extras = run_ranks(tmp_path, _trial, str(tiny_root), str(tmp_path / "trial"), average)
    assert extras[0]["replica_param_max_diff"] == extras[1]["replica_param_max_diff"]
    norms = extras[0]["first_step_grad_norm_per_rank"]
    assert norms[0] != pytest.approx(norms[1])  # each rank saw its own batch
    if average:
        assert extras[0]["replica_param_max_diff"] == 0.0
    else:
        assert extras[0]["replica_param_max_diff"] > 1e-4


def _curves(rank: int, root: str, folder: str):
    from medseg_platform.engine import DistContext, train_trial
    from medseg_platform.engine import loop as engine_loop
    from tests.test_engine import quiet, small_cfg

    original, own = engine_loop.TrainLoop.curve_row, []

    def recording(self, step):  # this rank's own means, before the rows are averaged over the ranks
        own.append({name: float(total) / self.term_counts[name] for name, total in self.term_sums.items()})
        return original(self, step)

    engine_loop.TrainLoop.curve_row = recording
    outcome = train_trial(small_cfg(Path(root), workers=WORLD), Path(folder), log=quiet, dist=DistContext(rank, WORLD))
    return own, [dict(row) for row in outcome.curves]


def test_the_curves_are_the_mean_over_the_ranks_not_rank_0_s_share(tiny_root, tmp_path):
    """curves.csv and the loss Tune saw were rank 0's own loss, 1/N of the batch trained on (the DDP review)."""
    (own0, rows0), (own1, rows1) = run_ranks(tmp_path, _curves, str(tiny_root), str(tmp_path / "trial"))
    assert len(rows0) == len(own0) == len(own1) >= 2
    assert any(a["loss"] != pytest.approx(b["loss"], rel=1e-6) for a, b in zip(own0, own1))  # each rank's own differ
    for row0, row1, a, b in zip(rows0, rows1, own0, own1):
        for name in a:
            assert row0[name] == pytest.approx((a[name] + b[name]) / 2, rel=1e-6) and row1[name] == pytest.approx(row0[name], rel=1e-6)


def _fp16_first_step_overflows(rank: int, root: str, folder: str):
    import medseg_platform.engine.loop as loop_module
    import medseg_platform.engine.trial as trial_module
    from medseg_platform.engine import DistContext, train_trial
    from tests.test_engine import quiet, small_cfg

    fp16 = lambda amp, device: {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]  # noqa: E731 - CPU emulation
    loop_module.autocast_dtype = trial_module.autocast_dtype = fp16
    build, calls = trial_module.build_trial_model, []

    def first_step_overflows(cfg, device):  # the first backward's gradients inf, as fp16's first steps at 2**16 often are
        model = build(cfg, device)
        next(model.parameters()).register_hook(lambda grad: grad * float("inf") if not calls.append(1) and len(calls) == 1 else grad)
        return model

    trial_module.build_trial_model = first_step_overflows
    outcome = train_trial(small_cfg(Path(root), workers=WORLD, **{"optim.amp": "fp16"}), Path(folder), log=quiet,
                          dist=DistContext(rank, WORLD), device=torch.device("cpu"))
    return outcome.extra["first_step_grad_norm_per_rank"]


def test_the_first_gradient_norms_are_of_the_first_step_fp16_did_not_skip(tiny_root, tmp_path):
    """fp16's first step often overflows at the scaler's initial 2**16 and is skipped; its norm was recorded as inf/NaN,
    the evidence that ranks see different data (the GPU-path review, fp16 emulated on the CPU)."""
    norms0, norms1 = run_ranks(tmp_path, _fp16_first_step_overflows, str(tiny_root), str(tmp_path / "trial"))
    assert norms0 == norms1 and all(math.isfinite(v) and v > 0 for v in norms0) and norms0[0] != pytest.approx(norms0[1])


class _Stopped(Exception):
    pass


#: A MONA pretraining stage of 6 steps with checkpoints at 2 and 4 (the stage-ii of docs/mona.md, small)
_STAGE = {"objective": "mona", "max_steps": 6, "checkpoint_every": 2, "labelled_batch": 2, "unlabelled_batch": 2}


def _resumed_objective_states(rank: int, root: str, folder: str, stop: bool, case: str):
    """MONA on two ranks, with ``stop`` stopped mid-way on every rank (as a killed trial's workers are) and trained
    again from its folder. ``case`` "fine-tuning": 8 steps, checkpoints at 4 and 8, stopped at step 6; "rank 0
    validating": 12 steps, rank 0 stopped inside its validation of step 8, rank 1 right after it wrote its state of
    step 8 (rank 0's checkpoint is still step 4's); "pretraining": the :data:`_STAGE` (checkpoints at 2 and 4)
    before 2 fine-tuning steps, stopped at the stage's step 5. Every resume is from step 4. Returns this rank's objective
    state at the end of the stage or fine-tuning (student, teacher, heads, memory banks and queues) and, for
    fine-tuning, its curves (the mean over the ranks)."""
    import medseg_platform.engine.loop as loop_module
    import medseg_platform.engine.pretrain as pretrain_module
    import medseg_platform.engine.trial as trial_module
    from medseg_platform.engine import DistContext, train_trial
    from tests.test_engine import quiet, small_cfg

    pretraining = case == "pretraining"
    module = pretrain_module if pretraining else trial_module
    build, built = module.build_objective, []
    module.build_objective = lambda *a, **k: built.append(build(*a, **k)) or built[-1]
    settings = {"fine-tuning": {}, "rank 0 validating": {"optim.max_steps": 12},
                "pretraining": {"pretrain": [_STAGE], "optim.max_steps": 2, "eval.val_every": 2}}[case]
    cfg = small_cfg(Path(root), workers=WORLD, objective="mona", **settings)
    if stop:
        step, validation_dice, validations = loop_module.TrainLoop.step, trial_module.validation_dice, []
        save_rank_state = trial_module.save_rank_state
        stop_at = {"fine-tuning": 6, "rank 0 validating": 8, "pretraining": 5}[case]

        def stopping(self, at):
            if at == stop_at and self.max_steps == (_STAGE["max_steps"] if pretraining else cfg.optim.max_steps):
                raise _Stopped
            return step(self, at)

        def stopping_in_the_second(*args, **kwargs):
            validations.append(1)
            if len(validations) == 2:
                raise _Stopped
            return validation_dice(*args, **kwargs)

        def stopping_after_step_8(folder, dist, at, *args):
            save_rank_state(folder, dist, at, *args)
            if at == 8:
                raise _Stopped

        loop_module.TrainLoop.step = stopping
        if case == "rank 0 validating":
            trial_module.validation_dice, trial_module.save_rank_state = stopping_in_the_second, stopping_after_step_8
        with pytest.raises(_Stopped):
            train_trial(cfg, Path(folder), log=quiet, dist=DistContext(rank, WORLD))
        loop_module.TrainLoop.step, trial_module.validation_dice, trial_module.save_rank_state = step, validation_dice, save_rank_state
        torch.distributed.barrier()  # both ranks stopped (rank 1 wrote its file of step 8 before rank 0 stopped)
        saved = {int(torch.load(path, weights_only=True)["step"]) for path in Path(folder).rglob("rank1_state-*.pt")}
        assert saved == {"fine-tuning": {4}, "rank 0 validating": {4, 8}, "pretraining": {2, 4}}[case]  # 4 the checkpoint's
        assert not list(Path(folder).rglob("rank0_state-*.pt"))  # rank 0's are in its checkpoint
    outcome = train_trial(cfg, Path(folder), log=quiet, dist=DistContext(rank, WORLD))
    assert outcome.resumed_from_step == (4 if stop and not pretraining else 0)
    torch.distributed.barrier()  # each rank removes its own files after its steps: wait for the other
    assert not list(Path(folder).rglob("rank*_state-*.pt"))  # removed once the steps ended
    curves = [{k: v for k, v in row.items() if k != "steps_per_s"} for row in outcome.curves]  # all but the timing
    return {k: v.detach().clone() for k, v in built[-1].state_dict().items()}, curves if not pretraining else None


@pytest.mark.parametrize("case", ["fine-tuning", "rank 0 validating", "pretraining"])
def test_a_resumed_multi_worker_trial_continues_every_rank_from_its_own_state(tiny_root, tmp_path, case):
    """Every rank keeps its own memory banks, queues and random streams; a resumed multi-worker trial used to start
    every rank from rank 0's (the checkpoint held rank 0's alone), so its ranks' banks and dropout masks were copies and
    its result differed from the uninterrupted trial's. Now each rank resumes from its own state: the same final state
    on every rank, value for value, also after a stop while rank 0 validated (rank 1's file of the next step was
    written, and it had replaced the one the checkpoint needed: the diff review)."""
    (tmp_path / "straight").mkdir(), (tmp_path / "resumed").mkdir()
    straight = run_ranks(tmp_path / "straight", _resumed_objective_states, str(tiny_root), str(tmp_path / "a"), False, case)
    resumed = run_ranks(tmp_path / "resumed", _resumed_objective_states, str(tiny_root), str(tmp_path / "b"), True, case)
    banks = [k for k in straight[1][0] if "queue" in k or "bank" in k]
    assert banks and any(not torch.equal(straight[0][0][k], straight[1][0][k]) for k in banks)  # the ranks' own banks
    for rank, ((state, curves), (state_resumed, curves_resumed)) in enumerate(zip(straight, resumed)):
        assert curves_resumed == curves, rank
        assert state_resumed.keys() == state.keys()
        differ = [k for k in state if not torch.equal(state[k], state_resumed[k])]
        assert differ == [], (rank, differ[:5])


def _stage_read_from_the_cache(rank: int, root: str, folder: str):
    from medseg_platform.engine import DistContext, train_trial
    from tests.test_engine import quiet, small_cfg

    cfg = small_cfg(Path(root), workers=WORLD, objective="mona", pretrain=[_STAGE], **{"optim.max_steps": 2, "eval.val_every": 2})
    cache = Path(folder) / "cache"
    train_trial(cfg, Path(folder) / "first", log=quiet, dist=DistContext(rank, WORLD), pretrain_cache=cache)
    torch.distributed.barrier()
    (stage,) = [path for path in cache.iterdir() if path.is_dir()]
    if rank == 1:  # left by a run stopped after the stage's final file, before rank 1 removed them
        for step in (2, 4):
            torch.save({"step": step}, stage / f"rank1_state-{step}.pt")
    torch.distributed.barrier()
    train_trial(cfg, Path(folder) / "second", log=quiet, dist=DistContext(rank, WORLD), pretrain_cache=cache)
    torch.distributed.barrier()
    return sorted(path.name for path in stage.iterdir())


def test_a_stage_read_from_the_cache_removes_rank_files_an_earlier_run_left(tiny_root, tmp_path):
    """The fix review: a run stopped after rank 0 wrote the stage's final file but before the ranks removed their own
    files left them in the shared cache for good, since a cached stage is never trained again."""
    names = run_ranks(tmp_path, _stage_read_from_the_cache, str(tiny_root), str(tmp_path / "t"))
    assert names[0] == names[1] and not [name for name in names[0] if name.startswith("rank")], names[0]
