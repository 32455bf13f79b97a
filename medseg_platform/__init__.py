"""medseg-platform: sweeps and ablations of semi-supervised contrastive medical image segmentation.

Sub-packages:
    medseg_platform.data        the ACDC/SSL4MIS layout reader, converters, phantom data, splits, augmentations
    medseg_platform.evaluation  per-case, per-class Dice/Jaccard/HD95/ASD and volume prediction
    medseg_platform.cli         the ``medseg`` console command
"""

__version__ = "0.1.0"
