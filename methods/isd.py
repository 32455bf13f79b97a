"""ISD relational distillation: the global and local KL terms of the pretraining stages (methods-spec §1.8).

Relational (similarity-distribution) distillation in the style of ISD (Tejankar et al., "ISD:
Self-Supervised Learning by Iterative Similarity Distillation", ICCV 2021) and CompRess (Abbasi
Koohpayegani et al., NeurIPS 2020), as used by ACTION stages i/ii (You et al., "Bootstrapping
Semi-supervised Medical Image Segmentation with Anatomical-aware Contrastive Distillation", IPMI 2023)
and MONA/ARCO stage 1 (You et al., "Mine yOur owN Anatomy", TPAMI 2024; "Rethinking Semi-Supervised
Medical Image Segmentation: A Variance-Reduction Perspective", NeurIPS 2023). Spec §9 item 6.

There is no positive pair: the teacher's similarity distribution over K queued teacher embeddings of
*earlier* images is the soft target of the student's distribution over the same K entries::

    L = (1/N) sum_n KL( softmax(cos(t_n, Q) / tau_t) || softmax(cos(s_n, Q) / tau_s) )

which is ``F.kl_div(log_softmax(s/tau_s), softmax(t/tau_t), reduction="batchmean")`` (spec §1.8 step 3).

Pieces (all of :class:`ISDRelationalKL`, one instance per objective):

* global (spec §1.8 step 3): projector ``Proj`` = GAP -> Linear(c4, c4) -> Linear(c4, D) on the
  bottleneck (no nonlinearity, no BN), separate student and teacher projectors; the student adds a
  predictor Linear(D, D) -> Linear(D, D). Queue ``Q_g`` (K, D).
* local (spec §1.8 step 4): windows of the *output logits*, each through ``h`` = AdaptiveAvgPool(pool)
  -> conv1x1 C -> 2C -> conv1x1 2C -> C (separate student/teacher heads); the student adds a predictor
  conv1x1 C -> C -> conv1x1 C -> C. Queue ``Q_l`` (K, P, C*pool*pool).
* FIFO queues (spec §1.8 step 5): the teacher embeddings of the current batch replace the oldest B
  entries after both terms are computed; ``K % B == 0`` as released.

Flags (the as-released value first; ``ISDConfig``):

* ``local_windows``: "action" = window starts ``range(0, S - window, stride)`` per side, as
  ``C:code/model.py:221-224`` (on 256/64/32: starts 0..160, 6 x 6 = 36 windows, the last row and
  column of windows never used, bug §8.8); "mona" = ``range(0, S - window + 1, stride)``, every window
  that fits, as ``M:code/model_2D.py:265-268`` (7 x 7 = 49).
* ``local_layout``: "as_coded_reshape" (as released, bug §8.8) or "per_patch" (as the papers describe).
  See :meth:`ISDRelationalKL.local_term`.
* ``teacher_head_grad``: "as_released" (the teacher-side heads are trained through the KL *target*,
  bug §8.9) or "stop_gradient" (the teacher heads get no gradient and are not trainable).

Numerics: :func:`relational_kl` is computed in log space. Its value equals ``F.kl_div`` (batchmean);
its gradient with respect to the teacher logits is the exact chain-rule limit, which is 0 wherever
``softmax(t / tau_t)`` underflows to 0 (e.g. a cosine gap > ~1.04 at tau_t = 0.01). That is what
torch 1.12 (the released environment) computed; current torch's ``F.kl_div`` returns NaN there
(pytorch/pytorch#89558), which as-released teacher-head training would turn into NaN weights.

Only torch; no host syncs (queue pointers stay on the device); windows by ``unfold`` (no Python loop).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from methods.objective import check_choice, check_number

LOCAL_WINDOWS = ("action", "mona")
LOCAL_LAYOUTS = ("as_coded_reshape", "per_patch")
TEACHER_HEAD_GRADS = ("as_released", "stop_gradient")


# ----------------------------------------------------------------------------------- pure functions


def window_starts(size: int, window: int, stride: int, local_windows: str) -> range:
    """Start offsets of the local windows along one side of a ``size`` x ``size`` map (spec §1.8 step 4).

    "action": ``range(0, size - window, stride)`` (C as released: the last offset ``size - window`` is
    excluded, so 256/64/32 gives 0..160, 6 starts); "mona": ``range(0, size - window + 1, stride)``
    (M: 0..192, 7 starts). The windows are taken row-major (rows outer, columns inner).
    """
    if local_windows not in LOCAL_WINDOWS:
        raise ValueError(f"local_windows must be one of {list(LOCAL_WINDOWS)}, got {local_windows!r}")
    end = size - window if local_windows == "action" else size - window + 1
    return range(0, max(end, 0), stride)


def relational_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """``(1/N) sum_n KL(softmax(t_n) || softmax(s_n))`` over rows; the KL of spec §1.8 steps 3-4.

    Args:
        student_logits: float (N, M), already divided by ``tau_s``.
        teacher_logits: float (N, M), already divided by ``tau_t``; gradients flow into it (the
            as-released "teacher head gradient", bug §8.9) unless the caller detaches it.

    Returns a float scalar equal to ``F.kl_div(log_softmax(s), softmax(t), reduction="batchmean")``,
    computed as ``sum p (log p - log q) / N`` with ``log p = log_softmax(t)`` so that the gradient is
    finite (0 where p underflows; see the module docstring).
    """
    if student_logits.dim() != 2 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            "relational_kl: student and teacher logits must both be (N, M), got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    log_q = torch.log_softmax(student_logits, dim=1)
    log_p = torch.log_softmax(teacher_logits, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum() / student_logits.shape[0]


def cosine_logits(x: torch.Tensor, keys: torch.Tensor, tau: float) -> torch.Tensor:
    """``cos(x_n, k_m) / tau``: x float (N, d), keys float (M, d) -> float (N, M). Rows are L2-normalised
    (``F.normalize``, eps 1e-12) at every use, so the scale of stored queue rows is irrelevant."""
    return F.normalize(x, dim=1) @ F.normalize(keys, dim=1).t() / tau


def queue_kl(
    student: torch.Tensor, teacher: torch.Tensor, queue: torch.Tensor, tau_student: float, tau_teacher: float
) -> torch.Tensor:
    """The global ISD loss of spec §1.8 step 3 for plain matrices.

    student, teacher: float (N, d) embeddings; queue: float (K, d). Returns
    ``relational_kl(cos(student, Q) / tau_student, cos(teacher, Q) / tau_teacher)``, a float scalar.
    """
    return relational_kl(cosine_logits(student, queue, tau_student), cosine_logits(teacher, queue, tau_teacher))


def fifo_enqueue_(queue: torch.Tensor, pointer: torch.Tensor, keys: torch.Tensor) -> None:
    """Write ``keys`` (B, *queue.shape[1:]) over the B oldest rows of ``queue`` (K, ...) and advance
    ``pointer`` (0-dim int64, on the queue's device) by B modulo K; no host sync.

    As released (spec §1.8 step 5) ``K`` must be a multiple of ``B``, so a batch never wraps; ValueError
    otherwise (naming ``queue_size``).
    """
    size, batch = queue.shape[0], keys.shape[0]
    if keys.shape[1:] != queue.shape[1:]:
        raise ValueError(f"fifo_enqueue_: keys {tuple(keys.shape)} do not match queue rows {tuple(queue.shape)}")
    if batch > size or size % batch:
        raise ValueError(f"ISD queue_size ({size}) must be a multiple of the batch size ({batch}) (spec §1.8 step 5)")
    index = (pointer + torch.arange(batch, device=queue.device)) % size
    queue.index_copy_(0, index, keys.detach().to(queue.dtype))
    pointer.copy_((pointer + batch) % size)


# --------------------------------------------------------------------------------------- modules


class GlobalProjector(nn.Sequential):
    """``Proj``: GAP -> Linear(c, c) -> Linear(c, D), no nonlinearity (spec §1.8; ``C:code/model.py:74-88``).

    (B, c, h, w) -> (B, D).
    """

    def __init__(self, in_channels: int, latent_dim: int) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_channels, in_channels), nn.Linear(in_channels, latent_dim)
        )


class GlobalPredictor(nn.Sequential):
    """Student predictor Linear(D, D) -> Linear(D, D), no nonlinearity (spec §1.8). (B, D) -> (B, D)."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__(nn.Linear(latent_dim, latent_dim), nn.Linear(latent_dim, latent_dim))


class LocalHead(nn.Sequential):
    """``h``: AdaptiveAvgPool(pool) -> conv1x1 C -> 2C -> conv1x1 2C -> C, no nonlinearity (spec §1.8).

    (N, C, w, w) -> (N, C, pool, pool).
    """

    def __init__(self, num_classes: int, pool_size: int) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(pool_size),
            nn.Conv2d(num_classes, 2 * num_classes, kernel_size=1),
            nn.Conv2d(2 * num_classes, num_classes, kernel_size=1),
        )


class LocalPredictor(nn.Sequential):
    """Student local predictor conv1x1 C -> C -> conv1x1 C -> C (spec §1.8). (N, C, p, p) -> (N, C, p, p)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__(nn.Conv2d(num_classes, num_classes, kernel_size=1), nn.Conv2d(num_classes, num_classes, kernel_size=1))


def validate_isd_fields(config: Any) -> None:
    """Validate the relational-distillation fields of ``config`` (an :class:`ISDConfig` or an objective
    config carrying the same fields); ValueError naming ``Config.field``."""
    name = type(config).__name__
    for field in ("latent_dim", "queue_size", "image_size", "window", "stride", "pool_size"):
        check_number(config, field, minimum=1, integer=True)
    check_number(config, "tau_student", minimum=0.0, min_inclusive=False)
    check_number(config, "tau_teacher", minimum=0.0, min_inclusive=False)
    check_choice(config, "local_windows", LOCAL_WINDOWS)
    check_choice(config, "local_layout", LOCAL_LAYOUTS)
    check_choice(config, "teacher_head_grad", TEACHER_HEAD_GRADS)
    if config.window > config.image_size:
        raise ValueError(f"{name}.window ({config.window}) must be <= {name}.image_size ({config.image_size})")
    if config.pool_size > config.window:
        raise ValueError(f"{name}.pool_size ({config.pool_size}) must be <= {name}.window ({config.window})")
    if not window_starts(config.image_size, config.window, config.stride, config.local_windows):
        raise ValueError(
            f"{name}.window ({config.window}) leaves no {config.local_windows!r} window on a "
            f"{config.image_size}-pixel side (\"action\" needs window < image_size)"
        )


@dataclass(frozen=True)
class ISDConfig:
    """Settings of :class:`ISDRelationalKL` (defaults: the ACTION ACDC script, spec §1.8, §2.3).

    * ``latent_dim`` D (512): global embedding size.
    * ``queue_size`` K (36): entries of both queues; a multiple of the batch size.
    * ``tau_student`` (0.1), ``tau_teacher`` (0.01; MONA's code default 0.1): temperatures, > 0.
    * ``image_size`` (256): side of the (square) training patches; fixes P, the local queue's shape.
    * ``window`` (64), ``stride`` (32): local window side and step in pixels of the logit map (the
      released code hard-codes stride = window // 2).
    * ``local_windows``: "action" (36 windows on 256) or "mona" (49); see :func:`window_starts`.
    * ``local_layout``: "as_coded_reshape" (as released) or "per_patch" (as described).
    * ``pool_size`` (8): AdaptiveAvgPool output side of ``h``; <= window.
    * ``teacher_head_grad``: "as_released" or "stop_gradient".
    """

    latent_dim: int = 512
    queue_size: int = 36
    tau_student: float = 0.1
    tau_teacher: float = 0.01
    image_size: int = 256
    window: int = 64
    stride: int = 32
    local_windows: str = "action"
    local_layout: str = "as_coded_reshape"
    pool_size: int = 8
    teacher_head_grad: str = "as_released"

    def __post_init__(self) -> None:
        validate_isd_fields(self)


class RelationalTerm(NamedTuple):
    """One ISD term: ``loss`` float scalar; ``student_logits`` / ``teacher_logits`` float (N, M) (already
    divided by their temperatures; the teacher's carries gradient as released); ``keys`` the detached
    teacher embeddings to enqueue, shaped like the queue's rows ((B, D) or (B, P, C*pool*pool))."""

    loss: torch.Tensor
    student_logits: torch.Tensor
    teacher_logits: torch.Tensor
    keys: torch.Tensor


class ISDRelationalKL(nn.Module):
    """Heads, predictors, queues and KL terms of ISD relational distillation (spec §1.8, §9 item 6).

    Args:
        num_classes: C, channels of the logit maps.
        bottleneck_channels: c4, channels of the UNet bottleneck (256 in the released UNet).
        config: :class:`ISDConfig`.

    Submodules: ``student_projector``, ``student_predictor``, ``teacher_projector`` (global);
    ``student_local_head``, ``student_local_predictor``, ``teacher_local_head`` (local). Buffers:
    ``global_queue`` float (K, D), ``local_queue`` float (K, P, C*pool*pool), ``global_queue_ptr`` and
    ``local_queue_ptr`` int64 0-dim. Queue init (as released): standard normal, L2-normalised along
    dim 0 (the K axis, i.e. the "wrong" axis); harmless because every use re-normalises the compared
    rows. The teacher heads are initialised independently of the student heads (as released).

    Use: ``g = global_term(...)``, ``l = local_term(...)`` (both read the queues), then
    ``enqueue(g.keys, l.keys)``.
    """

    def __init__(self, num_classes: int, bottleneck_channels: int, config: ISDConfig | None = None) -> None:
        super().__init__()
        config = ISDConfig() if config is None else config
        if not isinstance(config, ISDConfig):
            raise ValueError(f"ISDRelationalKL needs an ISDConfig, got {type(config).__name__}")
        for value, what in ((num_classes, "num_classes"), (bottleneck_channels, "bottleneck_channels")):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ISDRelationalKL.{what} must be a positive int, got {value!r}")
        self.config = config
        self.num_classes = num_classes
        self.starts = window_starts(config.image_size, config.window, config.stride, config.local_windows)
        self.num_windows = len(self.starts) ** 2
        embedding = num_classes * config.pool_size**2

        self.student_projector = GlobalProjector(bottleneck_channels, config.latent_dim)
        self.student_predictor = GlobalPredictor(config.latent_dim)
        self.teacher_projector = GlobalProjector(bottleneck_channels, config.latent_dim)
        self.student_local_head = LocalHead(num_classes, config.pool_size)
        self.student_local_predictor = LocalPredictor(num_classes)
        self.teacher_local_head = LocalHead(num_classes, config.pool_size)
        if config.teacher_head_grad == "stop_gradient":
            self.teacher_projector.requires_grad_(False)
            self.teacher_local_head.requires_grad_(False)

        k = config.queue_size
        self.register_buffer("global_queue", F.normalize(torch.randn(k, config.latent_dim), dim=0))
        self.register_buffer("local_queue", F.normalize(torch.randn(k, self.num_windows, embedding), dim=0))
        self.register_buffer("global_queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("local_queue_ptr", torch.zeros((), dtype=torch.long))

    # ------------------------------------------------------------------ helpers

    def _teacher(self, head: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.config.teacher_head_grad == "stop_gradient":
            with torch.no_grad():
                return head(x)
        return head(x)

    def windows(self, logits: torch.Tensor) -> torch.Tensor:
        """Local windows of a logit map, window-major as the released loop stacks them.

        logits float (B, C, S, S), S = ``image_size`` -> float (P*B, C, window, window), row ``p*B + b``
        = window p (row-major over the start grid) of image b. A strided view, then one copy.
        """
        cfg = self.config
        if logits.dim() != 4 or logits.shape[1] != self.num_classes or tuple(logits.shape[2:]) != (cfg.image_size,) * 2:
            raise ValueError(
                f"ISD local term: logits must be (B, {self.num_classes}, {cfg.image_size}, {cfg.image_size}) "
                f"(image_size = {cfg.image_size}), got {tuple(logits.shape)}"
            )
        n = len(self.starts)
        grid = logits.unfold(2, cfg.window, cfg.stride).unfold(3, cfg.window, cfg.stride)[:, :, :n, :n]
        return grid.permute(2, 3, 0, 1, 4, 5).reshape(n * n * logits.shape[0], self.num_classes, cfg.window, cfg.window)

    # ------------------------------------------------------------------ terms

    def global_term(self, student_bottleneck: torch.Tensor, teacher_bottleneck: torch.Tensor) -> RelationalTerm:
        """Global ISD term (spec §1.8 step 3).

        student_bottleneck, teacher_bottleneck: float (B, c4, h, w). ``s = Pred(Proj_s(e_s))``,
        ``t = Proj_t(e_t)`` (B, D); logits (B, K) against ``global_queue``; batchmean over B.
        ``keys`` = t detached, (B, D) (stored unnormalised, as released).
        """
        cfg = self.config
        student = self.student_predictor(self.student_projector(student_bottleneck))
        teacher = self._teacher(self.teacher_projector, teacher_bottleneck)
        queue = self.global_queue.clone()
        s_logits = cosine_logits(student, queue, cfg.tau_student)
        t_logits = cosine_logits(teacher, queue, cfg.tau_teacher)
        return RelationalTerm(relational_kl(s_logits, t_logits), s_logits, t_logits, teacher.detach())

    def local_term(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> RelationalTerm:
        """Local ISD term on windows of the output logits (spec §1.8 step 4).

        student_logits, teacher_logits: float (B, C, S, S). Each of the P windows goes through ``h``
        (the student's also through its predictor): embeddings (P*B, C, pool, pool), window-major.

        * "as_coded_reshape" (as released, bug §8.8): the window-major stack is flattened and cut into
          consecutive chunks of P scalars: student/teacher matrices (B*C*pool^2, P); the queue (K, P,
          C*pool^2) is transposed to (P, K, C*pool^2) and cut the same way: (K*C*pool^2, P). Logits
          (B*C*pool^2, K*C*pool^2), e.g. 1536 x 9216 for C=4, B=6, K=36, P=36, pool=8. The enqueued
          keys are the window-major stack viewed (not permuted) as (B, P, C*pool^2), so a stored "row"
          mixes images.
        * "per_patch" (as described): each window's C*pool^2 embedding is compared with the K queued
          embeddings of the *same* window position: logits (B*P, K); keys (B, P, C*pool^2) with entry
          [b, p] = window p of image b. (Our reading of "the same KL per patch embedding against the
          queue"; the papers give no more detail.)

        Batchmean over the rows of the logits.
        """
        cfg = self.config
        batch = student_logits.shape[0]
        if teacher_logits.shape != student_logits.shape:
            raise ValueError(
                f"ISD local term: teacher logits {tuple(teacher_logits.shape)} must match student logits "
                f"{tuple(student_logits.shape)}"
            )
        p = self.num_windows
        student = self.student_local_predictor(self.student_local_head(self.windows(student_logits)))
        teacher = self._teacher(self.teacher_local_head, self.windows(teacher_logits))
        queue = self.local_queue.clone()
        if cfg.local_layout == "as_coded_reshape":
            queue_rows = queue.transpose(0, 1).reshape(-1, p)
            s_logits = cosine_logits(student.reshape(-1, p), queue_rows, cfg.tau_student)
            t_logits = cosine_logits(teacher.reshape(-1, p), queue_rows, cfg.tau_teacher)
            keys = teacher.detach().reshape(batch, p, -1)
        else:
            s_emb = F.normalize(student.reshape(p, batch, -1).transpose(0, 1), dim=2)  # (B, P, E)
            t_emb = F.normalize(teacher.reshape(p, batch, -1).transpose(0, 1), dim=2)
            q_emb = F.normalize(queue, dim=2)  # (K, P, E)
            s_logits = torch.einsum("bpe,kpe->bpk", s_emb, q_emb).reshape(batch * p, -1) / cfg.tau_student
            t_logits = torch.einsum("bpe,kpe->bpk", t_emb, q_emb).reshape(batch * p, -1) / cfg.tau_teacher
            keys = teacher.detach().reshape(p, batch, -1).transpose(0, 1)
        return RelationalTerm(relational_kl(s_logits, t_logits), s_logits, t_logits, keys)

    @torch.no_grad()
    def enqueue(self, global_keys: torch.Tensor, local_keys: torch.Tensor) -> None:
        """FIFO-enqueue the teacher keys of one batch (spec §1.8 step 5): ``global_keys`` (B, D),
        ``local_keys`` (B, P, C*pool^2), both as returned in :attr:`RelationalTerm.keys`."""
        fifo_enqueue_(self.global_queue, self.global_queue_ptr, global_keys)
        fifo_enqueue_(self.local_queue, self.local_queue_ptr, local_keys)

    @torch.no_grad()
    def ema_update_teacher_heads(self, momentum: float) -> None:
        """MONA's extra EMA of the teacher heads from the student heads, ``t <- m t + (1 - m) s``
        (``Proj_t`` from ``Proj_s``, ``h_t`` from ``h_s``; spec §1.8 step 7, ``M:code/model_2D.py:179-182``)."""
        teacher = list(self.teacher_projector.parameters()) + list(self.teacher_local_head.parameters())
        student = list(self.student_projector.parameters()) + list(self.student_local_head.parameters())
        torch._foreach_mul_(teacher, momentum)
        torch._foreach_add_(teacher, [p.detach() for p in student], alpha=1.0 - momentum)
