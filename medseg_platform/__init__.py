"""medseg-platform: sweeps and ablations of semi-supervised contrastive medical image segmentation.

Modules (the flow of a study runs top to bottom):
    medseg_platform.profiles    the smoke/quick/paper profiles, the table rows' configurations, the study flags
    medseg_platform.study       a Study -> Ray Tune experiment (grid/Optuna/ASHA, restore, local or cluster)
    medseg_platform.distributed multi-worker trials through Ray Train
    medseg_platform.engine      one trial: pretraining stages (cached), fine-tuning, validation, test
    medseg_platform.results     the per-trial result files (the source of truth for tables)
    medseg_platform.config      typed, validated trial configuration
    medseg_platform.data        the ACDC/SSL4MIS layout reader, converters, phantom data, splits, augmentations
    medseg_platform.evaluation  per-case, per-class Dice/Jaccard/HD95/ASD and volume prediction
    medseg_platform.cli         what the ``medseg`` sub-commands share (the command is analysis.console)
"""

__version__ = "0.1.0"
