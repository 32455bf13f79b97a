"""One training trial: [pretraining stages] -> batches -> objective -> optimiser -> validation -> test.

The engine knows nothing about Ray: :func:`train_trial` takes a :class:`TrialConfig`, a trial folder and an optional
``report(metrics, checkpoint_dir)`` callback (the Tune function trainable passes one that calls ``ray.tune.report``).
One job per module:

* :mod:`~medseg_platform.engine.trial` -- :func:`train_trial`: pretraining, fine-tuning, validation and model
  selection (``eval.selection``), test, resume;
* :mod:`~medseg_platform.engine.pretrain` -- the pretraining stages, cached by :func:`stage_key`;
* :mod:`~medseg_platform.engine.loop` -- one optimisation step (:class:`TrainLoop`): batches, weak view, objective,
  optimiser, the poly learning rate (``optim.lr_step``), non-finite loss detection, mixed precision;
* :mod:`~medseg_platform.engine.augmentation` -- the strong views handed to the objectives
  (:class:`StrongAugmentAdapter`, the tested functions of :mod:`medseg_platform.data.augment`);
* :mod:`~medseg_platform.engine.ddp` -- data-parallel ranks (:class:`DistContext`) and their collectives;
* :mod:`~medseg_platform.engine.checkpoint` -- resumable training state and the selected weights
  (:func:`load_selected_model`);
* :mod:`~medseg_platform.engine.evaluate` -- validation/test metric rows and the qualitative slices;
* :mod:`~medseg_platform.engine.training_data` -- the slices a trial draws its batches from;
* :mod:`~medseg_platform.engine.reports` -- the progress fields of every report.

This package re-exports the names the rest of the platform imports.
"""

from medseg_platform.engine.augmentation import StrongAugmentAdapter
from medseg_platform.engine.checkpoint import load_selected_model
from medseg_platform.engine.ddp import DistContext, average_gradients, broadcast_state, gather_scalar, replica_max_difference
from medseg_platform.engine.evaluate import (QUALITATIVE_CASES, QualitativeSlices, evaluate_volumes, mean_dice, predict_case,
                                             validation_dice)
from medseg_platform.engine.loop import (NonFiniteLossError, NonFiniteMonitor, TrainLoop, build_trial_model, make_optimizer,
                                         autocast_dtype, logs_after, lr_after_step, pick_device, poly_lr)
from medseg_platform.engine.pretrain import STAGE_CACHE_VERSION, chain_keys, run_pretraining, stage_key
from medseg_platform.engine.reports import Reporter, progress_fields
from medseg_platform.engine.training_data import TrainingData, load_training_data
from medseg_platform.engine.trial import TrialOutcome, train_trial

__all__ = [
    "DistContext", "NonFiniteLossError", "NonFiniteMonitor", "QUALITATIVE_CASES",
    "QualitativeSlices", "Reporter", "STAGE_CACHE_VERSION", "StrongAugmentAdapter", "TrainLoop", "TrainingData", "TrialOutcome",
    "autocast_dtype", "average_gradients", "broadcast_state", "evaluate_volumes", "gather_scalar", "load_selected_model",
    "load_training_data", "logs_after", "lr_after_step", "mean_dice", "pick_device", "poly_lr", "predict_case", "progress_fields",
    "replica_max_difference", "run_pretraining", "stage_key", "chain_keys", "train_trial", "build_trial_model", "make_optimizer",
    "validation_dice",
]
