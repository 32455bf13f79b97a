"""medseg-platform: sweeps and ablations of semi-supervised contrastive medical image segmentation.

Modules (the flow of a study runs top to bottom):
    medseg_platform.study_flags the flags every study script shares
    medseg_platform.profiles    the smoke/quick/paper profiles (problem sizes)
    medseg_platform.recipes     the methods by id: table labels and their configurations at a profile's sizes
    medseg_platform.protocol    --protocol: the released scripts' evaluation, or the corrected one
    medseg_platform.study       a Study -> Ray Tune experiment (grid/Optuna/ASHA, restore, local or cluster; the
                                trainable, multi-worker trials through Ray Train)
    medseg_platform.engine      one trial: pretraining stages (cached), fine-tuning, validation, test
    medseg_platform.results     the study and trial folders and their files (the source of truth for tables)
    medseg_platform.stats       the NaN-aware mean
    medseg_platform.config      typed, validated trial configuration
    medseg_platform.data        the ACDC/SSL4MIS layout reader, converters, phantom data, splits, augmentations
    medseg_platform.evaluation  per-case, per-class Dice/Jaccard/HD95/ASD and volume prediction
    medseg_platform.cli         what the ``medseg`` sub-commands share (the command is analysis.console)

Beside the flow: overrides and variants (``--set``, ``--rows`` and the studies' rows), plan (``--dry-run``),
progress (the terminal lines and ETA), preflight (the data check before Ray), predict (``medseg predict``,
``--test-root``), train_cli (``medseg train``), dashboard, environment (what computed a trial), claims_spec (the
papers' claims a study declares), seeding (the one seeding function), io (atomic writes, signals) and errors.
"""

__version__ = "0.1.0"
