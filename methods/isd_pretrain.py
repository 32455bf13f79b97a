"""``isd_pretrain``: relational semi-supervised pretraining (ACTION stages i/ii, MONA/ARCO stage 1).

docs/isd_pretraining.md (ISD, the ACTION and MONA stages) and docs/data.md, 'Pretraining views'; papers:
ACTION (You et al., IPMI 2023), MONA (You et al., TPAMI 2024), ARCO (You et al., NeurIPS 2023); ISD
(Tejankar et al., ICCV 2021). The relational pieces live in :mod:`methods.isd`.

Batch (docs/data.md, 'Batches and epochs'): 3 labelled + 3 unlabelled weak views per step (the engine's
``labelled_batch`` / ``unlabelled_batch``); ``x = cat([x_l, x_u])`` (B = 6). One :meth:`ISDPretrainObjective.loss` call,
in the released order (``C:code/model.py:187-262``, ``C:code/train_2D_pretrain.py:215-245``):

1. views (docs/data.md, 'Pretraining views'): ``j, v = strong_augment.pretrain_views(x, view_coins)``, the
   colour-jittered images ``j`` and the teacher view ``v`` (``j`` then blurred). With
   ``view_coins="per_batch"`` (as released: one jitter coin and one blur coin, one blur sigma, per batch, the
   blur through 8-bit grey levels) the pair is ``(j, v)``: the released jitter writes into the batch tensor the
   student reads, so the student sees the jitter too and only the blur is the teacher's. With "per_image"
   (the platform's earlier view: coins per image, continuous, nothing reaches the student) the pair is
   ``(x, v)``. ``teacher_view="teacher_strong"`` (as released) gives the pair's first image to the student
   and the second to the teacher; "student_strong" (the weak-teacher/strong-student pairing the ACTION paper
   prefers; docs/published.md, 'ACTION paper (unverified)') swaps them (the supervised term then sees the
   student's image: the views are photometric);
2. student UNet on its view (train mode) -> logits ``z_s`` (B, C, H, W), bottleneck ``e_s``;
3. EMA update of the teacher UNet (m = ``ema_momentum``, parameters only), and with
   ``teacher_head_ema`` (MONA) of the teacher heads from the student heads. As released this happens
   *inside the forward, before the teacher pass*; here it happens in :meth:`loss` at the same point and
   :meth:`after_optimizer_step` does nothing (docs/isd_pretraining.md, 'One pretraining step'). (So step
   n's teacher already includes the student after optimiser step n-1, and the final teacher lacks the last
   step's update, as released.);
4. teacher UNet (no grad, train mode: batch BN statistics, dropout on) on its view -> ``z_t``, ``e_t``;
5. ``L_global`` and ``L_local`` (:class:`methods.isd.ISDRelationalKL`), then FIFO enqueue of the
   teacher keys (B global rows, B x P local entries);
6. ``L_sup = sup_weight (CE + Dice)`` on the student logits of the labelled images (docs/shared.md,
   'Supervised loss');
7. ``L = L_sup + global_weight L_global + local_weight L_local``. A term whose weight is 0 is still
   computed (under no grad) and logged, and its queue still advances, as released.

Logged terms: ``sup`` (weighted), ``ce``, ``dice``, ``global``, ``local`` (unweighted KLs), ``total``.

Stage presets (:data:`PRESETS`, config dicts; docs/isd_pretraining.md, 'Stages'):

* ``action_stage_i`` (``C:code/train_2D.sh:4-19``): ``train_decoder=False`` (decoder + output conv frozen
  at init), ``L = L_global`` (``local_weight=0``, ``sup_weight=0``), 30 000 steps;
* ``action_stage_ii`` (``:22-38``; = the defaults): loads stage i's student *and* teacher, trains all,
  ``L = 0.5 L_sup + L_global + L_local``, 36 windows, tau_t = 0.01;
* ``mona`` (``M:code/pretrain_2D.py``): one stage, ``L = L_sup + L_global + L_local``, 49 windows,
  tau_s = tau_t = 0.1 (its code defaults; the ARCO paper states tau_t = 0.01: docs/published.md, 'Settings
  stated in the papers'), teacher heads also EMA-updated; 30 000 steps (its script's 6000 do not match the
  checkpoint fine-tuning loads).

Stage hand-off: ``state_dict`` holds the student, the teacher, heads, predictors and both queues with
their pointers, so :meth:`load_state_dict` resumes a stage exactly and a stage-ii objective accepts a
stage-i state (same shapes). The released stage ii loads only the two UNets (heads and queues start
afresh): :meth:`load_student_and_teacher` does that.

Differences from the released code, on purpose:

* the released discarded teacher pass before the EMA update (``ema_output_tmp``) is not run: it only
  moved the teacher's BN running statistics, which nothing reads (the teacher always runs in train mode);
* no ShuffleBN permutation of the teacher batch: on one device BN statistics are permutation-invariant;
* the released in-place jitter's leak into the student view is reproduced by handing the student the
  jittered images (``view_coins="per_batch"``), not by writing into the batch;
* the KL's target gradient is 0 (torch 1.12's value) where current ``F.kl_div`` gives NaN
  (:func:`methods.isd.relational_kl`);
* the released code picks the loss from ``(train_encoder, train_decoder)``; here the weights say it,
  and ``train_decoder=False`` requires ``local_weight = sup_weight = 0`` (the only released use).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields
from typing import Any, Mapping

import torch
from torch import nn

from methods.ema import EMATeacher
from methods.errors import ConfigError, DataError
from methods.isd import ISDConfig, ISDRelationalKL, validate_isd_fields
from methods.losses import supervised_loss
from methods.objective import Batch, LossOutput, Objective, check_choice, check_number, detached

TEACHER_VIEWS = ("teacher_strong", "student_strong")
PRETRAIN_COINS = ("per_batch", "per_image")  # ISDPretrainConfig.view_coins: as released, the platform's earlier view

PRESETS: dict[str, dict[str, Any]] = {
    "action_stage_i": {"train_decoder": False, "local_weight": 0.0, "sup_weight": 0.0},
    "action_stage_ii": {},
    "mona": {"local_windows": "mona", "sup_weight": 1.0, "tau_teacher": 0.1, "teacher_head_ema": True},
}


@dataclass(frozen=True)
class ISDPretrainConfig:
    """ISD pretraining settings (defaults: ACTION stage ii on ACDC, docs/isd_pretraining.md, 'Defaults and flags';
    all validated).

    Relational distillation (see :class:`methods.isd.ISDConfig`): ``latent_dim`` (512), ``queue_size``
    (36, a multiple of the batch), ``tau_student`` (0.1), ``tau_teacher`` (0.01), ``image_size`` (256,
    must equal the training patch side), ``window`` (64), ``stride`` (32), ``local_windows``
    ("action" | "mona"), ``local_layout`` ("as_coded_reshape" as released | "per_patch" as described),
    ``pool_size`` (8), ``teacher_head_grad`` ("as_released" | "stop_gradient").

    Objective:

    * ``ema_momentum`` in [0, 1) (0.99): teacher UNet EMA (and teacher heads with ``teacher_head_ema``).
    * ``global_weight`` k1 (1), ``local_weight`` k2 (1; ACTION stage i 0), ``sup_weight`` (ACTION 0.5,
      MONA 1.0; 0 = no supervised term): >= 0, not all 0.
    * ``train_encoder`` (True), ``train_decoder`` (True): False freezes the student's encoder /
      decoder + output conv (``requires_grad=False``; ACTION stage i freezes the decoder at init).
      ``train_decoder=False`` requires ``local_weight == sup_weight == 0``.
    * ``teacher_head_ema``: False (ACTION) / True (MONA, as released there).
    * ``teacher_view``: "teacher_strong" (as released) | "student_strong" (as the ACTION paper prefers).
    * ``view_coins``: "per_batch" (as released: one jitter and one blur decision per batch, one blur sigma,
      blur on 8-bit grey levels, the jitter reaching the student's images too) | "per_image" (decisions per
      image, continuous, the student's images untouched). See the module docstring, step 1.
    """

    latent_dim: int = 512
    queue_size: int = 36
    tau_student: float = 0.1
    tau_teacher: float = 0.01
    ema_momentum: float = 0.99
    global_weight: float = 1.0
    local_weight: float = 1.0
    sup_weight: float = 0.5
    image_size: int = 256
    window: int = 64
    stride: int = 32
    local_windows: str = "action"
    local_layout: str = "as_coded_reshape"
    pool_size: int = 8
    train_encoder: bool = True
    train_decoder: bool = True
    teacher_head_grad: str = "as_released"
    teacher_head_ema: bool = False
    teacher_view: str = "teacher_strong"
    view_coins: str = "per_batch"

    def __post_init__(self) -> None:
        name = type(self).__name__
        validate_isd_fields(self)
        check_number(self, "ema_momentum", minimum=0.0, maximum=1.0, max_inclusive=False)
        for field in ("global_weight", "local_weight", "sup_weight"):
            check_number(self, field, minimum=0.0)
        if self.global_weight == self.local_weight == self.sup_weight == 0:
            raise ConfigError(f"{name}.global_weight: global_weight, local_weight and sup_weight are all 0 "
                              "(give at least one term a weight > 0)")
        for field in ("train_encoder", "train_decoder", "teacher_head_ema"):
            if not isinstance(getattr(self, field), bool):
                raise ConfigError(f"{name}.{field}: must be a bool, got {getattr(self, field)!r} (use true or false)")
        check_choice(self, "teacher_view", TEACHER_VIEWS)
        check_choice(self, "view_coins", PRETRAIN_COINS)
        if not self.train_decoder and (self.local_weight or self.sup_weight):
            raise ConfigError(
                f"{name}.train_decoder: False (ACTION stage i) trains L_global only, but local_weight = "
                f"{self.local_weight} and sup_weight = {self.sup_weight} (set both to 0)"
            )

    def isd_config(self) -> ISDConfig:
        """The :class:`methods.isd.ISDConfig` part of these settings."""
        return ISDConfig(**{f.name: getattr(self, f.name) for f in fields(ISDConfig)})


def _optional_grad(enabled: bool):
    return contextlib.nullcontext() if enabled else torch.no_grad()


class ISDPretrainObjective(Objective):
    """ISD relational pretraining (see the module docstring).

    Attributes: ``student`` (the UNet), ``teacher`` (:class:`methods.ema.EMATeacher`, train mode),
    ``isd`` (:class:`methods.isd.ISDRelationalKL`: heads, predictors, queues). The model must be a
    :class:`methods.unet.UNet` (or expose ``num_classes``, ``channels``, ``encoder``, ``decoder``,
    ``head`` and return ``logits``/``bottleneck``). With ``train_encoder``/``train_decoder`` False the
    constructor sets ``requires_grad=False`` on those parts of ``model`` (in place), so
    :meth:`trainable_parameters` leaves them out.

    ``loss`` raises (before any side effect) a :class:`DataError` when the images are not ``image_size``
    squared and a :class:`ConfigError` when ``queue_size`` is not a multiple of ``B_l + B_u``.
    """

    name = "isd_pretrain"
    config_class = ISDPretrainConfig
    requires_unlabelled = True
    requires_strong_augment = True

    def __init__(self, model: nn.Module, config: ISDPretrainConfig | None = None) -> None:
        super().__init__(model, config)
        cfg = self.config
        missing = [a for a in ("num_classes", "channels", "encoder", "decoder", "head") if not hasattr(model, a)]
        if missing:
            raise ConfigError(f"isd_pretrain: the model lacks {missing} (use methods.unet.UNet, model.name 'unet')")
        if not cfg.train_encoder:
            model.encoder.requires_grad_(False)
        if not cfg.train_decoder:
            model.decoder.requires_grad_(False)
            model.head.requires_grad_(False)
        self.teacher = EMATeacher(model, momentum=cfg.ema_momentum, copy_buffers=False)
        self.isd = ISDRelationalKL(model.num_classes, model.channels[-1], cfg.isd_config())

    def loss(self, batch: Batch, step: int, max_steps: int) -> LossOutput:
        self.check_batch(batch)
        cfg = self.config
        n_labelled = batch.labelled_image.shape[0]
        images = torch.cat([batch.labelled_image, batch.unlabelled_image], dim=0)
        self._check_images(images)  # before any side effect (EMA, queues)
        jittered, view = batch.strong_augment.pretrain_views(images, cfg.view_coins)
        pair = (jittered if cfg.view_coins == "per_batch" else images, view)
        student_in, teacher_in = pair if cfg.teacher_view == "teacher_strong" else pair[::-1]

        student = self.student(student_in)
        self.teacher.update(self.student)  # as released: inside the forward, before the teacher pass
        if cfg.teacher_head_ema:
            self.isd.ema_update_teacher_heads(cfg.ema_momentum)
        teacher = self.teacher.predict(teacher_in, bn_mode="train")

        with _optional_grad(cfg.global_weight > 0):
            global_term = self.isd.global_term(student.bottleneck, teacher.bottleneck)
        with _optional_grad(cfg.local_weight > 0):
            local_term = self.isd.local_term(student.logits, teacher.logits)
        self.isd.enqueue(global_term.keys, local_term.keys)
        with _optional_grad(cfg.sup_weight > 0):
            sup, parts = supervised_loss(student.logits[:n_labelled], batch.label, cfg.sup_weight)

        parts_of_total = [sup] if cfg.sup_weight > 0 else []  # ``sup`` is already weighted
        for weight, term in ((cfg.global_weight, global_term), (cfg.local_weight, local_term)):
            if weight > 0:
                parts_of_total.append(weight * term.loss)
        total = torch.stack(parts_of_total).sum()
        terms = {"sup": sup, **parts, "global": global_term.loss, "local": local_term.loss, "total": total}
        return LossOutput(total, detached(terms))

    def _check_images(self, images: torch.Tensor) -> None:
        cfg = self.config
        if tuple(images.shape[2:]) != (cfg.image_size, cfg.image_size):
            raise DataError(
                f"ISDPretrainConfig.image_size: {cfg.image_size}, but the batch holds "
                f"{tuple(images.shape[2:])} images (set it to the training patch size)"
            )
        if cfg.queue_size % images.shape[0]:
            raise ConfigError(
                f"ISDPretrainConfig.queue_size: {cfg.queue_size} is not a multiple of the batch size "
                f"B_l + B_u = {images.shape[0]} (docs/isd_pretraining.md, 'Queues'; change either)"
            )

    def after_optimizer_step(self, step: int) -> None:
        """Nothing: the EMA update happens inside :meth:`loss`, before the teacher pass (as released)."""

    def load_student_and_teacher(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """The released stage hand-off (``C:code/train_2D_pretrain.py:172-176``): load only the student
        and teacher UNets from another objective's ``state_dict`` (keys ``student.*``, ``teacher.*``);
        heads, predictors and queues keep their fresh initialisation. Missing or unexpected UNet keys
        raise (strict)."""
        for prefix, module in (("student.", self.student), ("teacher.", self.teacher)):
            module.load_state_dict({k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)})
