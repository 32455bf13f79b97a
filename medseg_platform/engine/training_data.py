"""What every stage of a trial draws its batches from: the labelled subset and its slices, held in memory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from medseg_platform.config import TrialConfig
from medseg_platform.data.datasets import SliceBank
from medseg_platform.data.layout import AcdcLayout
from medseg_platform.data.splits import LabelledSubset, select_labelled


@dataclass
class TrainingData:
    """The dataset, the labelled subset, and its labelled and unlabelled slices at the patch size (built once per
    trial; ``unlabelled`` is None when the labelled set covers every training slice)."""

    layout: AcdcLayout
    subset: LabelledSubset
    labelled: SliceBank
    unlabelled: SliceBank | None


def load_training_data(cfg: TrialConfig, log: Callable[[str], None]) -> TrainingData:
    """Read ``cfg.data``'s training slices and split them into the labelled subset and the rest."""
    layout = AcdcLayout(cfg.data.root, cfg.data.num_classes)
    labelled_seed = cfg.seed if cfg.data.labelled_seed is None else cfg.data.labelled_seed
    subset = select_labelled(layout.train_slices, cfg.data.labelled, cfg.data.labelled_strategy, labelled_seed)
    log(subset.describe())
    labelled = SliceBank(layout, subset.labelled_slices, cfg.data.patch_size, cfg.data.image_resize)
    unlabelled = SliceBank(layout, subset.unlabelled_slices, cfg.data.patch_size, cfg.data.image_resize) if subset.unlabelled_slices else None
    return TrainingData(layout, subset, labelled, unlabelled)
