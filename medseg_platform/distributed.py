"""Multi-worker trials: Ray Train's ``TorchTrainer`` launched from the Tune function trainable.

A trial with ``num_workers > 1`` (several GPUs, or several nodes) runs :func:`worker_loop` on
``num_workers`` Ray Train workers; Ray Train sets up the torch process group (gloo on CPU, NCCL on GPU)
and :func:`medseg_platform.engine.train_trial` runs data-parallel on it (:class:`DistContext`). Every
rank calls ``ray.train.report`` at each validation (rank 0 with the checkpoint); the
``TuneReportCallback`` passes rank 0's metrics to the Tune trial. Rank 0 writes the result files,
which therefore need a results directory every node can reach.

On 2 CPUs a Tune function reserving a whole CPU plus two one-CPU workers deadlocks (ray-stack.md), so
the Tune function of a multi-worker trial reserves only a token fraction of a CPU
(``TUNE_FUNCTION_CPU``), taken off the workers' share: a trial of ``n`` workers at ``c`` CPUs each
reserves exactly ``n * c`` CPUs in all.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

TUNE_FUNCTION_CPU = 0.01


def run_distributed_trial(config: dict, tags: dict, trial_dir: Path, storage: Path, num_workers: int,
                          cpus_per_worker: float, gpus_per_worker: float) -> None:
    """Run one trial on ``num_workers`` Ray Train workers and wait for it (call from a Tune trial)."""
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={"config": config, "tags": tags, "trial_dir": str(trial_dir)},
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=gpus_per_worker > 0,
                                     resources_per_worker={"CPU": cpus_per_worker - TUNE_FUNCTION_CPU / num_workers,
                                                           **({"GPU": gpus_per_worker} if gpus_per_worker > 0 else {})}),
        # a unique name: re-using one silently resumes the old Train run (ray-stack.md). Only the latest
        # checkpoint is kept: the engine resumes from the trial folder, Ray's copy is for the dashboard/Tune.
        run_config=RunConfig(name=f"{Path(trial_dir).name}-{uuid.uuid4().hex[:8]}", storage_path=str(storage),
                             callbacks=[TuneReportCallback()], checkpoint_config=CheckpointConfig(num_to_keep=1)),
    )
    trainer.fit()


def worker_loop(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker: a rank of the data-parallel trial."""
    import ray.train
    import torch

    from medseg_platform.config import TrialConfig
    from medseg_platform.engine import DistContext, train_trial
    from medseg_platform.results import write_trial_results

    context = ray.train.get_context()
    dist = DistContext(context.get_world_rank(), context.get_world_size())
    cfg = TrialConfig.from_dict(loop_config["config"])
    trial_dir = Path(loop_config["trial_dir"])
    device = ray.train.torch.get_device() if torch.cuda.is_available() else torch.device("cpu")

    def report(metrics: dict, checkpoint_dir: Path | None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if (dist.is_main and checkpoint_dir is not None) else None
        ray.train.report({**metrics, "best_val_dice": metrics["best_val_dice"]}, checkpoint=checkpoint)

    from medseg_platform.study import pretrain_cache_dir

    outcome = train_trial(cfg, trial_dir, report=report, dist=dist, device=device, pretrain_cache=pretrain_cache_dir(trial_dir.parent.parent),
                          log=lambda msg: print(f"[rank {dist.rank}] {msg}", flush=True) if dist.is_main else None)
    if dist.is_main:
        write_trial_results(trial_dir, config=loop_config["config"], tags=loop_config["tags"], outcome=outcome, seed=cfg.seed)
