"""Augmentations as batched torch ops (docs/data.md, 'Resizing', 'Weak view', 'Strong view'): their entry points.

All vectorised over the batch and device-agnostic (every tensor they create lives on the input's device; random
numbers come only from an explicit CPU ``torch.Generator`` and are moved to the device afterwards):

* :func:`resize_slice` / :func:`resize_to_patch` -- the dataloader resize to the patch size
  (nearest for image and label as in MONA/ARCO; the cubic spline image zoom as in ACTION;
  :mod:`medseg_platform.data.resize`).
* :func:`weak_augment` -- the MONA/ARCO ``RandomGenerator`` weak view (rot90 + flip, or a small
  rotation, or identity; :mod:`medseg_platform.data.weak_view`).  ACTION's weak view has no geometric
  augmentation: call it with ``p_rot90_flip=0, p_rotate=0`` (or skip it), i.e. resize only.
* :func:`strong_augment` -- the strong view of unlabelled images: CutMix / ClassMix / CutOut
  (:mod:`medseg_platform.data.mixing`), then brightness/contrast jitter and Gaussian blur
  (:mod:`medseg_platform.data.photometric`), with the released 8-bit PIL round-trip (:mod:`methods.intensity`) by
  default.  It is :func:`strong_mix` then :func:`strong_perturb`, the two stages that training calls (the engine's
  strong-view adapter: one mix, then one perturbation per strong draw).  The random ``AdvMorph`` diffeomorphic warp
  that the released code applies after these steps (docs/data.md, 'AdvMorph warp') lives in
  :mod:`medseg_platform.data.advmorph`; the adapter chains it after :func:`strong_perturb`.
* :func:`pretrain_views` -- the ISD pretraining views (docs/data.md, 'Pretraining views').

The building blocks of the modules named above are re-exported here (``__all__``).

Nothing is modified in place: every function returns new tensors.  (The released pretraining
jitter writes into the shared batch tensor, docs/data.md, 'Pretraining views': :func:`pretrain_views` reproduces its
effect by returning the jittered images for the student too, not by writing in place.)

Errors for bad input are ``ValueError`` with a one-line message
``<function>: <what is wrong> (<what to do>)`` naming the offending argument
(:mod:`medseg_platform.data.augment_checks`).
"""

from __future__ import annotations

import torch

from medseg_platform.data.augment_checks import (
    _check_generator,
    _check_image_batch,
    _check_map_batch,
    _check_probability,
    _check_range_pair,
    _fail,
)
from medseg_platform.data.mixing import MIX_MODES, _check_num_classes, box_masks, classmix_keep_masks, mix_batch, sample_boxes
from medseg_platform.data.photometric import (
    SIGMA_MAX,
    adjust_brightness,
    adjust_contrast,
    color_jitter,
    gaussian_blur,
    gaussian_kernels,
    pil_gaussian_blur,
    random_gaussian_blur,
)
from medseg_platform.data.resize import resize_slice, resize_to_patch
from medseg_platform.data.weak_view import WeakParams, apply_weak, sample_weak_params, weak_augment
from methods.intensity import from_grey_levels, round_trip_8bit, to_grey_levels
from methods.isd_pretrain import PRETRAIN_COINS

__all__ = [
    "WeakParams",
    "MIX_MODES",
    "resize_slice",
    "resize_to_patch",
    "sample_weak_params",
    "apply_weak",
    "weak_augment",
    "sample_boxes",
    "box_masks",
    "classmix_keep_masks",
    "mix_batch",
    "round_trip_8bit",
    "adjust_brightness",
    "adjust_contrast",
    "color_jitter",
    "gaussian_kernels",
    "gaussian_blur",
    "pil_gaussian_blur",
    "random_gaussian_blur",
    "strong_mix",
    "strong_perturb",
    "pretrain_views",
    "strong_augment",
]


def pretrain_views(
    image: torch.Tensor,
    generator: torch.Generator,
    coins: str = "per_batch",
    p_jitter: float = 0.5,
    p_blur: float = 0.5,
    factors: tuple[float, float] = (0.8, 1.2),
    sigma_range: tuple[float, float] = (0.15, SIGMA_MAX),
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ISD pretraining views of a batch: ``(jittered, teacher)`` (docs/data.md, 'Pretraining views').

    ``jittered`` is the batch after the colour jitter only, ``teacher`` is ``jittered`` then blurred.

    * ``coins="per_batch"`` (released): one jitter decision for the batch (``p_jitter``); when it fires, every
      image gets its own brightness and contrast factors in ``factors`` in a random order, continuous (the
      released jitter works on the float tensor); then one blur decision and one sigma ~ U(sigma_range) for the
      batch (``p_blur``); when it fires the blur runs on 8-bit grey levels as the released PIL path does
      (truncation to grey levels, Pillow's blur, /255: :func:`pil_gaussian_blur`), otherwise ``teacher`` is
      ``jittered`` unchanged. The released jitter writes in place into the batch the student reads; the caller
      reproduces that by giving ``jittered`` to the student.
    * ``coins="per_image"``: per-image jitter (``p_jitter``) then per-image blur (``p_blur``), both continuous.

    Args:
        image: (B, C, H, W) floating in [0, 1].
        generator: CPU generator.
    Returns: two new (B, C, H, W) tensors.
    """
    where = "pretrain_views"
    _check_image_batch(where, "image", image)
    _check_generator(where, generator)
    _check_probability(where, "p_jitter", p_jitter)
    _check_probability(where, "p_blur", p_blur)
    _check_range_pair(where, "factors", factors)
    _check_range_pair(where, "sigma_range", sigma_range)
    if coins not in PRETRAIN_COINS:
        raise _fail(where, f"coins must be one of {PRETRAIN_COINS}, got {coins!r}", "e.g. coins='per_batch'")
    if coins == "per_image":
        jittered = color_jitter(image, generator, p_jitter, brightness=factors, contrast=factors)
        return jittered, random_gaussian_blur(jittered, generator, p_blur, sigma_range)
    jitter = bool(torch.rand((), generator=generator) < p_jitter)  # a CPU draw: no device sync
    jittered = color_jitter(image, generator, 1.0, brightness=factors, contrast=factors) if jitter else image.clone()
    blur = bool(torch.rand((), generator=generator) < p_blur)
    sigma = torch.empty((), dtype=torch.float64).uniform_(*sigma_range, generator=generator)
    if not blur:
        return jittered, jittered.clone()
    return jittered, from_grey_levels(pil_gaussian_blur(to_grey_levels(jittered), sigma.expand(image.shape[0])))


def _check_value_ranges(where: str, image: torch.Tensor, pseudo_label: torch.Tensor,
                        confidence: torch.Tensor, num_classes: int | None) -> None:
    """Range checks for :func:`strong_augment` with a single device synchronisation.

    image and confidence must lie in [0, 1] (no NaN); pseudo-labels in [-1, num_classes).
    """
    label_bad = pseudo_label.min() < -1
    if num_classes is not None:
        label_bad = label_bad | (pseudo_label.max() >= num_classes)
    flags = torch.stack([
        ~((image >= 0) & (image <= 1)).all(),
        ~((confidence >= 0) & (confidence <= 1)).all(),
        label_bad,
    ]).tolist()  # the one host synchronisation
    if flags[0]:
        raise _fail(where, "image values must lie in [0, 1]", "min-max normalise the images")
    if flags[1]:
        raise _fail(where, "confidence values must be probabilities in [0, 1]", "pass max softmax probabilities")
    if flags[2]:
        raise _fail(where, f"pseudo_label values must lie in [-1, {num_classes if num_classes is not None else 'C'})",
                    "pass argmax class ids (or -1 for ignore)")


def strong_mix(
    image: torch.Tensor,
    pseudo_label: torch.Tensor,
    confidence: torch.Tensor,
    generator: torch.Generator,
    mix: str = "cutmix",
    quantise_8bit: bool = True,
    num_classes: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """First stage of the strong view (docs/data.md, 'Strong view', step 2): mix, then the released 8-bit round trip.

    :func:`mix_batch` with partner (i+1) mod B, then with ``quantise_8bit`` the mixed image and confidence go
    through :func:`methods.intensity.round_trip_8bit` (the released code hands both to PIL as 8-bit images).
    Training calls it once per step and :func:`strong_perturb` once per strong draw (MONA draws two from one
    mix); :func:`strong_augment` chains the two.

    Args: as :func:`mix_batch`; ``quantise_8bit``: False keeps everything continuous.
    Returns: new image (B, C, H, W) (multiples of 1/255 with ``quantise_8bit``), pseudo_label (B, H, W),
    confidence (B, H, W), with the input dtypes.
    """
    image, pseudo_label, confidence = mix_batch(image, pseudo_label, confidence, generator, mix, num_classes)
    if quantise_8bit:
        image, confidence = round_trip_8bit(image), round_trip_8bit(confidence)
    return image, pseudo_label, confidence


def strong_perturb(
    image: torch.Tensor,
    generator: torch.Generator,
    p_jitter: float = 0.5,
    p_blur: float = 0.5,
    quantise_8bit: bool = True,
) -> torch.Tensor:
    """Second stage of the strong view (docs/data.md, 'Strong view', step 3): photometric jitter then blur, per image.
    ``image`` must lie in [0, 1]; it is unchecked here and in :func:`strong_mix`, since a check costs a device sync at
    every training step (:func:`strong_augment` checks with ``check_values``; training's slices are checked when read).
    An image on a 0..255 scale would come out clamped to white.

    With ``p_jitter`` brightness and contrast factors ~ U[0.75, 1.25] in a random order (:func:`color_jitter`),
    then with ``p_blur`` a Gaussian blur with sigma ~ U(0.15, 1.15) (:func:`random_gaussian_blur`).
    With ``quantise_8bit`` (the released PIL path) the image is taken to grey levels 0..255 first
    (:func:`methods.intensity.to_grey_levels`; exact for an image that :func:`strong_mix` already round-tripped),
    jitter and blur compute on grey levels with PIL's integer rounding (truncation after each jitter operation; the
    blur is Pillow's own, :func:`pil_gaussian_blur`), and the result is divided by 255.
    Without it everything stays continuous.

    Args:
        image: (B, C, H, W) floating in [0, 1].
        generator: CPU generator (6 values per image).
    Returns: new (B, C, H, W) tensor (multiples of 1/255 with ``quantise_8bit``).
    """
    levels = 255 if quantise_8bit else None
    if quantise_8bit:
        image = to_grey_levels(image)
    image = color_jitter(image, generator, p_jitter, levels=levels)
    image = random_gaussian_blur(image, generator, p_blur, levels=levels)
    return from_grey_levels(image) if quantise_8bit else image


def strong_augment(
    image: torch.Tensor,
    pseudo_label: torch.Tensor,
    confidence: torch.Tensor,
    generator: torch.Generator,
    mix: str = "cutmix",
    p_jitter: float = 0.5,
    p_blur: float = 0.5,
    quantise_8bit: bool = True,
    num_classes: int | None = None,
    check_values: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Strong view of unlabelled images (docs/data.md, 'Strong view', steps 2-3; docs/shared.md, 'Pseudo-label loss'):
    :func:`strong_mix` then :func:`strong_perturb`, with input checks.

    1. Mixing with partner (i+1) mod B (:func:`mix_batch`; ``cutmix`` in all released scripts).
    2. With ``quantise_8bit`` the mixed image and confidence go through the released 8-bit PIL round
       trip: truncation to grey levels 0..255, brightness/contrast computed on grey levels with PIL's
       integer rounding (truncation after each jitter operation), the blur by Pillow itself
       (:func:`pil_gaussian_blur`), then /255.  Without it everything stays continuous.
    3. Photometric per image: with ``p_jitter`` brightness and contrast factors ~ U[0.75, 1.25] in a
       random order (:func:`color_jitter`), then with ``p_blur`` a Gaussian blur with sigma ~
       U(0.15, 1.15) (:func:`random_gaussian_blur`).  Only the image is changed.

    Training runs the same two stages through the engine's strong-view adapter
    (``medseg_platform.engine.augmentation.StrongAugmentAdapter``), which adds the random ``AdvMorph`` warp of
    the images that the released code applies afterwards (once per batch with p=0.5;
    :func:`medseg_platform.data.advmorph.random_diffeomorphic_warp`); crop/rescale are identities at the patch
    size and are not implemented.

    Args:
        image: (B, C, H, W) floating in [0, 1] (the weak view).
        pseudo_label: (B, H, W) integer teacher argmax (values in [-1, C)).
        confidence: (B, H, W) floating teacher max probability in [0, 1].
        generator: CPU generator; the same seed reproduces the batch.
        mix: ``"cutmix"``, ``"classmix"``, ``"cutout"`` or ``"none"``.
        p_jitter, p_blur: per-image probabilities.
        quantise_8bit: reproduce the 8-bit round trip (outputs are multiples of 1/255).
        num_classes: C, used by classmix and the label range check; pass it on GPU (see :func:`mix_batch`).
        check_values: check value ranges (one device synchronisation); pass False in hot GPU loops.

    Returns: new image (B, C, H, W), pseudo_label (B, H, W), confidence (B, H, W) with the input dtypes.
    """
    where = "strong_augment"
    _check_image_batch(where, "image", image)
    _check_map_batch(where, "pseudo_label", pseudo_label, image, integer=True, signed=True)
    _check_map_batch(where, "confidence", confidence, image, integer=False)
    _check_generator(where, generator)
    _check_probability(where, "p_jitter", p_jitter)
    _check_probability(where, "p_blur", p_blur)
    if mix not in MIX_MODES:
        raise _fail(where, f"mix must be one of {MIX_MODES}, got {mix!r}", "e.g. mix='cutmix'")
    _check_num_classes(where, num_classes)
    if check_values:
        _check_value_ranges(where, image, pseudo_label, confidence, num_classes)

    image, pseudo_label, confidence = strong_mix(image, pseudo_label, confidence, generator, mix, quantise_8bit, num_classes)
    return strong_perturb(image, generator, p_jitter, p_blur, quantise_8bit), pseudo_label, confidence
