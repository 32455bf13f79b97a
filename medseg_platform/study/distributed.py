"""Multi-worker trials: Ray Train's ``TorchTrainer`` launched from the Tune function trainable.

A trial with ``num_workers > 1`` (several GPUs, or several nodes) runs :func:`worker_loop` on
``num_workers`` Ray Train workers; Ray Train sets up the torch process group (gloo on CPU, NCCL on GPU)
and each worker trains its rank with the trainable's own
:func:`~medseg_platform.study.trainable.train_and_record` (data-parallel: :mod:`medseg_platform.engine.ddp`).
Every rank calls ``ray.train.report`` at each validation (rank 0 with the checkpoint) and with progress only at every
curve row and during pretraining; the
``TuneReportCallback`` passes rank 0's metrics to the Tune trial. Rank 0 writes the result files, which
therefore need a results directory every node can reach.

On 2 CPUs a Tune function reserving a whole CPU plus two one-CPU workers deadlocks (docs/ray.md,
'CPU reservations of multi-worker trials'), so the Tune function of a multi-worker trial reserves only
a token fraction of a CPU (``TUNE_FUNCTION_CPU``), taken off each worker's share (:func:`worker_cpus`): a trial of
``n`` workers at ``c`` CPUs each reserves at most ``n * c`` CPUs, and any node that holds one of its workers has
room for its token. Taken off the workers' share only once (``c - token / n`` each), the node that held the token
and a worker needed ``c + token / n`` CPUs: on nodes of exactly ``k * c`` CPUs (two 8-CPU, 1-GPU nodes at
``--cpus-per-trial 8``) the worker group never started (the cluster review).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

TUNE_FUNCTION_CPU = 0.01


def worker_cpus(cpus_per_worker: float) -> float:
    """The CPUs a Ray Train worker of a multi-worker trial asks for: ``--cpus-per-trial`` less the Tune function's
    token (module docstring); the study refuses a share not above the token (``Study.validate``)."""
    return cpus_per_worker - TUNE_FUNCTION_CPU


def run_distributed_trial(config: dict, tags: dict, trial_dir: Path, pretrain_cache: Path, storage: Path, num_workers: int,
                          cpus_per_worker: float, gpus_per_worker: float) -> None:
    """Run one trial on ``num_workers`` Ray Train workers and wait for it (call from a Tune trial); ``storage``: where
    Ray Train keeps the run (:func:`medseg_platform.results.ray_train_storage`)."""
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    remove_earlier_train_runs(storage, Path(trial_dir).name)
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={"config": config, "tags": tags, "trial_dir": str(trial_dir), "pretrain_cache": str(pretrain_cache)},
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=gpus_per_worker > 0,
                                     resources_per_worker={"CPU": worker_cpus(cpus_per_worker),
                                                           **({"GPU": gpus_per_worker} if gpus_per_worker > 0 else {})}),
        # a unique name: re-using one silently resumes the old Train run (docs/ray.md, 'Unique Train run names').
        # Only the latest checkpoint is kept: the engine resumes from the trial folder, Ray's copy is for the
        # dashboard/Tune.
        run_config=RunConfig(name=f"{Path(trial_dir).name}-{uuid.uuid4().hex[:8]}", storage_path=str(storage),
                             callbacks=[TuneReportCallback()], checkpoint_config=CheckpointConfig(num_to_keep=1)),
    )
    trainer.fit()


def remove_earlier_train_runs(storage: Path, trial_name: str) -> None:
    """Delete the Ray Train runs an earlier attempt or run of the trial left under ``storage`` (``<trial>-<8 hex>``, each
    with a full checkpoint copy): the engine resumes from the trial folder, never from them, and every retry used to add
    one (the cluster audit)."""
    import re
    import shutil

    pattern = re.compile(re.escape(trial_name) + r"-[0-9a-f]{8}")
    if storage.is_dir():
        for run in storage.iterdir():
            if run.is_dir() and pattern.fullmatch(run.name):
                shutil.rmtree(run, ignore_errors=True)


def worker_loop(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker: a rank of the data-parallel trial (rank 0 also writes the result files)."""
    import ray.train
    import torch

    from medseg_platform.engine import DistContext
    from medseg_platform.study.ray_runtime import trial_placement
    from medseg_platform.study.trainable import train_and_record

    context = ray.train.get_context()
    dist = DistContext(context.get_world_rank(), context.get_world_size())
    device = ray.train.torch.get_device() if torch.cuda.is_available() else torch.device("cpu")

    def report(metrics: dict, checkpoint_dir: Path | None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if (dist.is_main and checkpoint_dir is not None) else None
        ray.train.report(dict(metrics), checkpoint=checkpoint)

    train_and_record(loop_config["config"], loop_config["tags"], Path(loop_config["trial_dir"]), Path(loop_config["pretrain_cache"]),
                     report=report, dist=dist, device=device, extra={"placement": trial_placement()},
                     log=lambda msg: print(f"[rank {dist.rank}] {msg}", flush=True) if dist.is_main else None)
