"""ISD relational distillation: the global and local KL terms of the pretraining stages (docs/isd_pretraining.md).

Relational (similarity-distribution) distillation in the style of ISD (Tejankar et al., "ISD:
Self-Supervised Learning by Iterative Similarity Distillation", ICCV 2021) and CompRess (Abbasi
Koohpayegani et al., NeurIPS 2020), as used by ACTION stages i/ii (You et al., "Bootstrapping
Semi-supervised Medical Image Segmentation with Anatomical-aware Contrastive Distillation", IPMI 2023)
and MONA/ARCO stage 1 (You et al., "Mine yOur owN Anatomy", TPAMI 2024; "Rethinking Semi-Supervised
Medical Image Segmentation: A Variance-Reduction Perspective", NeurIPS 2023); docs/isd_pretraining.md,
'Defaults and flags'.

There is no positive pair: the teacher's similarity distribution over K queued teacher embeddings of
*earlier* images is the soft target of the student's distribution over the same K entries::

    L = (1/N) sum_n KL( softmax(cos(t_n, Q) / tau_t) || softmax(cos(s_n, Q) / tau_s) )

which is ``F.kl_div(log_softmax(s/tau_s), softmax(t/tau_t), reduction="batchmean")`` (docs/isd_pretraining.md,
'Global term').

Pieces (all of :class:`ISDRelationalKL`, one instance per objective):

* global (docs/isd_pretraining.md, 'Global term'): projector ``Proj`` = GAP -> Linear(c4, c4) -> Linear(c4, D) on the
  bottleneck (no nonlinearity, no BN), separate student and teacher projectors; the student adds a
  predictor Linear(D, D) -> Linear(D, D). Queue ``Q_g`` (K, D).
* local (docs/isd_pretraining.md, 'Local term'): windows of the *output logits*, each through ``h`` = AdaptiveAvgPool(pool)
  -> conv1x1 C -> 2C -> conv1x1 2C -> C (separate student/teacher heads); the student adds a predictor
  conv1x1 C -> C -> conv1x1 C -> C. Queue ``Q_l`` (K, P, C*pool*pool).
* FIFO queues (docs/isd_pretraining.md, 'Queues'): the teacher embeddings of the current batch replace the oldest B
  entries after both terms are computed; ``K % B == 0`` as released.

Flags (the as-released value first; ``ISDConfig``):

* ``local_windows``: "action" = window starts ``range(0, S - window, stride)`` per side, as
  ``C:code/model.py:221-224`` (on 256/64/32: starts 0..160, 6 x 6 = 36 windows, the last row and
  column of windows never used, docs/isd_pretraining.md, 'Local term as released'); "mona" =
  ``range(0, S - window + 1, stride)``, every window that fits, as ``M:code/model_2D.py:265-268`` (7 x 7 = 49).
* ``local_layout``: "as_coded_reshape" (as released; docs/isd_pretraining.md, 'Local term as released') or
  "per_patch" (as the papers describe).
  See :meth:`ISDRelationalKL.local_term`.
* ``teacher_head_grad``: "as_released" (the teacher-side heads are trained through the KL *target*;
  docs/isd_pretraining.md, 'Teacher-side heads') or "stop_gradient" (the teacher heads get no gradient and are not trainable).

Numerics: :func:`relational_kl` is computed in log space. Its value equals ``F.kl_div`` (batchmean);
its gradient with respect to the teacher logits is the exact chain-rule limit, which is 0 wherever
``softmax(t / tau_t)`` underflows to 0 (e.g. a cosine gap > ~1.04 at tau_t = 0.01). That is what
torch 1.12 (the released environment) computed; current torch's ``F.kl_div`` returns NaN there
(pytorch/pytorch#89558), which as-released teacher-head training would turn into NaN weights.

The "as_coded_reshape" local KL, whose logits are (B*C*pool^2, K*C*pool^2) (1536 x 9216 at the
released sizes), is evaluated by :func:`blocked_queue_kl`: the same value and gradients in cache-sized
row blocks with the gradients in closed form, never materialising the logits (about 5x faster on a CPU
than the dense autograd graph; the dense reference lives in ``tests/methods/test_isd_dense.py``).

Only torch; no host syncs (queue pointers stay on the device); windows by ``unfold`` (no Python loop).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from methods.ema import ema_update_
from methods.errors import ConfigError, DataError
from methods.objective import check_choice, check_number

LOCAL_WINDOWS = ("action", "mona")
LOCAL_LAYOUTS = ("as_coded_reshape", "per_patch")
TEACHER_HEAD_GRADS = ("as_released", "stop_gradient")


# ----------------------------------------------------------------------------------- pure functions


def window_starts(size: int, window: int, stride: int, local_windows: str) -> range:
    """Start offsets of the local windows along one side of a ``size`` x ``size`` map (docs/isd_pretraining.md,
    'Local term').

    "action": ``range(0, size - window, stride)`` (C as released: the last offset ``size - window`` is
    excluded, so 256/64/32 gives 0..160, 6 starts); "mona": ``range(0, size - window + 1, stride)``
    (M: 0..192, 7 starts). The windows are taken row-major (rows outer, columns inner).
    """
    if local_windows not in LOCAL_WINDOWS:
        raise ConfigError(f"window_starts: local_windows must be one of {list(LOCAL_WINDOWS)}, got {local_windows!r} (pick one)")
    end = size - window if local_windows == "action" else size - window + 1
    return range(0, max(end, 0), stride)


def relational_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """``(1/N) sum_n KL(softmax(t_n) || softmax(s_n))`` over rows; the KL of the global and local terms.

    Args:
        student_logits: float (N, M), already divided by ``tau_s``.
        teacher_logits: float (N, M), already divided by ``tau_t``; gradients flow into it (the
            as-released "teacher head gradient") unless the caller detaches it.

    Returns a float scalar equal to ``F.kl_div(log_softmax(s), softmax(t), reduction="batchmean")``,
    computed as ``sum p (log p - log q) / N`` with ``log p = log_softmax(t)`` so that the gradient is
    finite (0 where p underflows; see the module docstring).
    """
    if student_logits.dim() != 2 or student_logits.shape != teacher_logits.shape:
        raise DataError(
            "relational_kl: student and teacher logits must both be (N, M), got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)} (pass matching 2-D logits)"
        )
    log_q = torch.log_softmax(student_logits, dim=1)
    log_p = torch.log_softmax(teacher_logits, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum() / student_logits.shape[0]


def full_precision_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype the ISD logits are computed in: float32, or float64 where an input is (never half precision)."""
    dtype = torch.float32
    for tensor in tensors:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


def cosine_logits(x: torch.Tensor, keys: torch.Tensor, tau: float) -> torch.Tensor:
    """``cos(x_n, k_m) / tau``: x float (N, d), keys float (M, d) -> float (N, M), at least float32. Rows are
    L2-normalised (``F.normalize``, eps 1e-12) at every use, so the scale of stored queue rows is irrelevant.

    Computed with autocast off in :func:`full_precision_dtype`: at the teacher's tau 0.01 the logits reach ±100, where
    bfloat16 holds steps of 0.5 and would sharpen or flatten the teacher's distribution (the GPU-path review; the
    local term's :func:`blocked_queue_kl` was in float32 already). Float32 inputs give the same numbers as before."""
    dtype = full_precision_dtype(x, keys)
    with torch.autocast(x.device.type, enabled=False):
        return F.normalize(x.to(dtype), dim=1) @ F.normalize(keys.to(dtype), dim=1).t() / tau


def queue_kl(
    student: torch.Tensor, teacher: torch.Tensor, queue: torch.Tensor, tau_student: float, tau_teacher: float
) -> torch.Tensor:
    """The global ISD loss (docs/isd_pretraining.md, 'Global term') for plain matrices.

    student, teacher: float (N, d) embeddings; queue: float (K, d). Returns
    ``relational_kl(cos(student, Q) / tau_student, cos(teacher, Q) / tau_teacher)``, a float scalar.
    """
    return relational_kl(cosine_logits(student, queue, tau_student), cosine_logits(teacher, queue, tau_teacher))


#: Rows per block of :func:`blocked_queue_kl` = these elements // M, by device type. CPU: 2**19 (56 rows
#: of M = 9216); its two (2 x rows, M) float32 work blocks (8 MiB) stay in the L3 cache (32-128 rows
#: time alike at the quick size; 4-8 rows are slower: small GEMMs). Other devices: 2**25 (all 1536
#: rows of the quick/paper local term in one block, at most 512 MiB of work blocks).
BLOCK_ELEMENTS = {"cpu": 2**19}
BLOCK_ELEMENTS_OTHER = 2**25


#: Set by :func:`denormals_kept` only.
_KEEP_DENORMALS = False


def _flushing_denormals() -> bool:
    """Whether this thread's CPU already flushes denormal floats to zero (a denormal times 1 reads as 0)."""
    return float(torch.full((1,), 1e-39, dtype=torch.float32, device="cpu").mul_(1.0)[0]) == 0.0


@contextlib.contextmanager
def flushed_denormals(device: torch.device) -> Iterator[None]:
    """Run the block with the CPU's flush-to-zero and denormals-are-zero modes on (``torch.set_flush_denormal``), and
    put the mode back after; a no-op off the CPU, with more than one intra-op thread, where the mode is already on,
    or on a CPU without the modes.

    Why (``docs/methods.md``, 'ISD pretraining: denormal probabilities'): with ACTION's teacher temperature 0.01 many
    of a row's softmax probabilities fall below float32's smallest normal number (1.2e-38, e^-87.3 of the row's
    largest), and an Intel x86 CPU computes with such denormal numbers up to about 100x slower: ACTION's stage ii step
    took 4x as long on an Intel Xeon (``benchmarks/RESULTS.md``). Flushed, such a probability counts as 0; each adds at
    most 1.2e-38 |D| to sums of order 1e-3 and above, far below half a float32 ulp, so the loss and the gradients come
    out the same numbers (the tests compare them bit for bit). The mode belongs to a thread and torch sets the calling
    thread's only: with intra-op worker threads (``threads`` > 1) the workers would keep computing with denormals (a
    parallel region waits for the slowest), and a worker created inside the block would inherit the mode for good, so
    the block then runs as it is."""
    if (_KEEP_DENORMALS or device.type != "cpu" or torch.get_num_threads() != 1 or _flushing_denormals()
            or not torch.set_flush_denormal(True)):
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


@contextlib.contextmanager
def denormals_kept() -> Iterator[None]:
    """Within the block :func:`flushed_denormals` does nothing, so :func:`blocked_queue_kl` computes denormal
    probabilities as such: the computation before 2026-12-06, for ``benchmarks/bench_isd.py`` and the tests."""
    global _KEEP_DENORMALS
    before, _KEEP_DENORMALS = _KEEP_DENORMALS, True
    try:
        yield
    finally:
        _KEEP_DENORMALS = before


class _BlockedQueueKL(torch.autograd.Function):
    """Autograd wrapper of :func:`_blocked_queue_kl_forward`: the gradients with respect to the (N, d)
    student and teacher rows are computed in the forward pass (they need the same N x M softmax blocks,
    which are not kept) and only scaled by ``grad_output`` in backward."""

    @staticmethod
    def forward(ctx, student_rows, teacher_rows, keys, need_student, need_teacher, block_rows):  # noqa: D102
        loss, grad_s, grad_t = _blocked_queue_kl_forward(student_rows, teacher_rows, keys, need_student, need_teacher, block_rows)
        ctx.save_for_backward(grad_s, grad_t)
        ctx.dtypes = (student_rows.dtype, teacher_rows.dtype)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):  # noqa: D102
        grad_s, grad_t = ctx.saved_tensors
        scale = grad_output.to(grad_s.dtype)
        return ((grad_s * scale).to(ctx.dtypes[0]) if ctx.needs_input_grad[0] else None,
                (grad_t * scale).to(ctx.dtypes[1]) if ctx.needs_input_grad[1] else None, None, None, None, None)


def _blocked_queue_kl_forward(
    student_rows: torch.Tensor, teacher_rows: torch.Tensor, keys: torch.Tensor, need_student: bool, need_teacher: bool,
    block_rows: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss and analytic gradients of :func:`blocked_queue_kl`, in row blocks (no autograd inside).

    student_rows, teacher_rows: (N, d), already L2-normalised and divided by their temperatures;
    keys: (M, d) L2-normalised. Returns the loss (0-dim) and dL/d(student_rows), dL/d(teacher_rows)
    (N, d) (zeros where not needed), all in the compute dtype (float32 at least).
    """
    with flushed_denormals(student_rows.device):
        return _blocked_queue_kl_blocks(student_rows, teacher_rows, keys, need_student, need_teacher, block_rows)


def _blocked_queue_kl_blocks(
    student_rows: torch.Tensor, teacher_rows: torch.Tensor, keys: torch.Tensor, need_student: bool, need_teacher: bool,
    block_rows: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_blocked_queue_kl_forward`'s loop over row blocks (in the caller's denormal mode)."""
    dtype = torch.promote_types(torch.promote_types(student_rows.dtype, teacher_rows.dtype), keys.dtype)
    dtype = torch.promote_types(dtype, torch.float32)
    s_rows, t_rows = student_rows.to(dtype), teacher_rows.to(dtype)
    keys_t = keys.to(dtype).t().contiguous()  # (d, M): both GEMMs read it row-major
    n, m = s_rows.shape[0], keys_t.shape[1]
    block = max(1, min(n, block_rows))
    logits = s_rows.new_empty(2 * block, m)  # [S; T] of one block, then [dS; dT]
    probs = s_rows.new_empty(2 * block, m)  # [q; p] = [softmax(S); softmax(T)]
    grads = s_rows.new_zeros(n, 2, s_rows.shape[1])  # [dL/ds^_n, dL/dt^_n] (times N)
    total = s_rows.new_zeros(())
    for i in range(0, n, block):
        j = min(i + block, n)
        b = j - i
        st, qp = logits[:2 * b], probs[:2 * b]
        s, t, q, p = st[:b], st[b:], qp[:b], qp[b:]
        torch.mm(torch.cat([s_rows[i:j], t_rows[i:j]]), keys_t, out=st)  # one GEMM for student and teacher
        torch.softmax(st, 1, out=qp)
        # lse(x) = max x - log(max softmax(x)): the softmax at the arg-max is exactly 1 / sum exp(x - max)
        lse = st.amax(1).sub_(qp.amax(1).log_())
        lse_gap = lse[:b] - lse[b:]  # c_n = lse(S_n) - lse(T_n)
        t.sub_(s).mul_(p)  # p D, D = T - S
        weighted = t.sum(1)  # r_n = sum_m p_nm D_nm
        total += (weighted + lse_gap * p.sum(1)).sum()  # KL_n = r_n + c_n sum_m p_nm
        if not (need_student or need_teacher):
            continue
        if need_teacher:
            t.addcmul_(p, weighted[:, None], value=-1.0)  # dT = p D - p r = p (D - r)
        if need_student:
            torch.sub(q, p, out=s)  # dS = q - p
        rows = slice(0, 2 * b) if need_student and need_teacher else slice(0, b) if need_student else slice(b, 2 * b)
        g = torch.mm(keys_t, st[rows].t())  # (d, rows): one GEMM for both gradients
        if need_student:
            grads[i:j, 0] = g[:, :b].t()
        if need_teacher:
            grads[i:j, 1] = g[:, -b:].t()
    inv_n = 1.0 / n
    return total * inv_n, grads[:, 0] * inv_n, grads[:, 1] * inv_n


def blocked_queue_kl(
    student: torch.Tensor,
    teacher: torch.Tensor,
    queue: torch.Tensor,
    tau_student: float,
    tau_teacher: float,
    block_rows: int | None = None,
) -> torch.Tensor:
    """:func:`queue_kl` (value and gradients) without materialising the (N, M) logits (docs/methods.md,
    'ISD pretraining: the released local term in blocks').

    student, teacher: float (N, d); queue: float (M, d), a constant (no gradient flows into it; if it
    requires one, :func:`queue_kl` is used). Returns the float scalar
    ``(1/N) sum_n KL(softmax(cos(t_n, Q) / tau_t) || softmax(cos(s_n, Q) / tau_s))``.

    Exact reformulation (equal to :func:`queue_kl` up to float rounding; the tests compare them in
    float64 at rtol 1e-6). With ``s^_n = normalize(s_n) / tau_s``, ``t^_n = normalize(t_n) / tau_t``,
    ``k^_m = normalize(q_m)``, ``S = s^ k^T``, ``T = t^ k^T`` (the 1/tau scaling is applied to the (N, d)
    rows instead of the (N, M) logits), ``q = softmax(S)``, ``p = softmax(T)`` (rows), ``D = T - S``,
    ``r_n = sum_m p_nm D_nm`` and ``c_n = lse(S_n) - lse(T_n)``:

    * loss: ``log p - log q = D + c``, so ``KL_n = r_n + c_n sum_m p_nm``; ``lse(x) = max x -
      log(max softmax(x))`` (the softmax at the arg-max is ``1 / sum exp(x - max)``), so two softmaxes
      give everything: 2 N x M exponentials, the floor of any exact evaluation;
    * gradients (in closed form, as autograd composes them for :func:`relational_kl`):
      ``dL/dS = (q - p) / N``, ``dL/dT = p (D - r) / N`` (= ``p (a - sum p a) / N``, ``a = log p - log q``;
      0 wherever p underflows, as :func:`relational_kl`), then ``dL/ds^ = dL/dS k^``, ``dL/dt^ = dL/dT k^``;
      autograd carries them through the normalisation, the temperatures and the heads.

    Cost: rows in blocks of ``block_rows`` (default: ``BLOCK_ELEMENTS`` // M: cache-sized on a CPU,
    all rows at once on an accelerator); per block one GEMM for [S; T] (2b, M), one softmax of it, two
    row-max reductions, five in-place passes (``p D``, its row sums, ``p (D - r)``, ``q - p``, ``sum p``),
    and one GEMM ``k^T [dS; dT]^T``. The gradients are computed in the forward (skipped for an input
    that needs none: no gradient mode, a weight-0 term, a ``stop_gradient`` teacher); backward only
    scales them by the incoming gradient (no double backward). Memory: two (2 x block_rows, M) work
    blocks instead of about ten (N, M) tensors kept for backward. The floor of an exact evaluation is
    the four N x M x d GEMMs (S, T and the two gradient contractions) and the 2 N x M exponentials; at
    the quick size (N = 1536, M = 9216, d = P = 49, 1 CPU thread) they take about 88 ms and 37 ms of the
    about 145 ms this function takes (the dense path: about 750 ms forward and backward). Under
    autocast the rows are normalised and the KL computed in float32 (the dense path ran the GEMM in the autocast
    dtype).
    """
    if student.dim() != 2 or student.shape != teacher.shape or queue.dim() != 2 or queue.shape[1] != student.shape[1]:
        raise DataError(
            "blocked_queue_kl: student and teacher must both be (N, d) and the queue (M, d), got "
            f"{tuple(student.shape)}, {tuple(teacher.shape)} and {tuple(queue.shape)} (pass matching rows)"
        )
    grad_mode = torch.is_grad_enabled()
    if grad_mode and queue.requires_grad:
        return queue_kl(student, teacher, queue, tau_student, tau_teacher)
    need_student, need_teacher = grad_mode and student.requires_grad, grad_mode and teacher.requires_grad
    if block_rows is None:
        budget = BLOCK_ELEMENTS.get(student.device.type, BLOCK_ELEMENTS_OTHER)
        block_rows = max(1, budget // max(1, queue.shape[0]))
    dtype = full_precision_dtype(student, teacher, queue)  # before the temperatures: bf16 rows / 0.01 moved the teacher's
    s_rows = F.normalize(student.to(dtype), dim=1) / tau_student  # logits by up to 0.24 (the ACTION review); a no-op
    t_rows = F.normalize(teacher.to(dtype), dim=1) / tau_teacher  # for float32 rows
    with torch.no_grad():
        keys = F.normalize(queue.to(dtype), dim=1)
    with torch.autocast(device_type=student.device.type, enabled=False):
        if not (need_student or need_teacher):
            return _blocked_queue_kl_forward(s_rows, t_rows, keys, False, False, block_rows)[0]
        return _BlockedQueueKL.apply(s_rows, t_rows, keys, need_student, need_teacher, block_rows)


def fifo_enqueue_(queue: torch.Tensor, pointer: torch.Tensor, keys: torch.Tensor) -> None:
    """Write ``keys`` (B, *queue.shape[1:]) over the B oldest rows of ``queue`` (K, ...) and advance
    ``pointer`` (0-dim int64, on the queue's device) by B modulo K; no host sync.

    As released (docs/isd_pretraining.md, 'Queues') ``K`` must be a multiple of ``B``, so a batch never wraps;
    :class:`ConfigError` otherwise (naming ``queue_size``); keys of the wrong shape are a :class:`DataError`.
    """
    size, batch = queue.shape[0], keys.shape[0]
    if keys.shape[1:] != queue.shape[1:]:
        raise DataError(f"fifo_enqueue_: keys {tuple(keys.shape)} do not match queue rows {tuple(queue.shape)} "
                        "(enqueue the keys the terms returned)")
    if batch > size or size % batch:
        raise ConfigError(f"ISD queue_size: {size} is not a multiple of the batch size {batch} "
                          "(set queue_size to a multiple of B_l + B_u)")
    index = (pointer + torch.arange(batch, device=queue.device)) % size
    queue.index_copy_(0, index, keys.detach().to(queue.dtype))
    pointer.copy_((pointer + batch) % size)


# --------------------------------------------------------------------------------------- modules


class GlobalProjector(nn.Sequential):
    """``Proj``: GAP -> Linear(c, c) -> Linear(c, D), no nonlinearity (docs/isd_pretraining.md, 'Heads and queues';
    ``C:code/model.py:74-88``).

    (B, c, h, w) -> (B, D).
    """

    def __init__(self, in_channels: int, latent_dim: int) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_channels, in_channels), nn.Linear(in_channels, latent_dim)
        )


class GlobalPredictor(nn.Sequential):
    """Student predictor Linear(D, D) -> Linear(D, D), no nonlinearity (docs/isd_pretraining.md, 'Heads and queues').
    (B, D) -> (B, D)."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__(nn.Linear(latent_dim, latent_dim), nn.Linear(latent_dim, latent_dim))


class LocalHead(nn.Sequential):
    """``h``: AdaptiveAvgPool(pool) -> conv1x1 C -> 2C -> conv1x1 2C -> C, no nonlinearity (docs/isd_pretraining.md,
    'Heads and queues').

    (N, C, w, w) -> (N, C, pool, pool).
    """

    def __init__(self, num_classes: int, pool_size: int) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(pool_size),
            nn.Conv2d(num_classes, 2 * num_classes, kernel_size=1),
            nn.Conv2d(2 * num_classes, num_classes, kernel_size=1),
        )


class LocalPredictor(nn.Sequential):
    """Student local predictor conv1x1 C -> C -> conv1x1 C -> C (docs/isd_pretraining.md, 'Heads and queues').
    (N, C, p, p) -> (N, C, p, p)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__(nn.Conv2d(num_classes, num_classes, kernel_size=1), nn.Conv2d(num_classes, num_classes, kernel_size=1))


def validate_isd_fields(config: Any) -> None:
    """Validate the relational-distillation fields of ``config`` (an :class:`ISDConfig` or an objective
    config carrying the same fields); :class:`ConfigError` naming ``Config.field``."""
    name = type(config).__name__
    for field in ("latent_dim", "queue_size", "image_size", "window", "stride", "pool_size"):
        check_number(config, field, minimum=1, integer=True)
    check_number(config, "tau_student", minimum=0.0, min_inclusive=False)
    check_number(config, "tau_teacher", minimum=0.0, min_inclusive=False)
    check_choice(config, "local_windows", LOCAL_WINDOWS)
    check_choice(config, "local_layout", LOCAL_LAYOUTS)
    check_choice(config, "teacher_head_grad", TEACHER_HEAD_GRADS)
    if config.window > config.image_size:
        raise ConfigError(f"{name}.window: {config.window} is larger than {name}.image_size {config.image_size} "
                          "(use a window <= image_size)")
    if config.pool_size > config.window:
        raise ConfigError(f"{name}.pool_size: {config.pool_size} is larger than {name}.window {config.window} "
                          "(use pool_size <= window)")
    if not window_starts(config.image_size, config.window, config.stride, config.local_windows):
        raise ConfigError(
            f"{name}.window: {config.window} leaves no {config.local_windows!r} window on a "
            f"{config.image_size}-pixel side (\"action\" needs window < image_size)"
        )


@dataclass(frozen=True)
class ISDConfig:
    """Settings of :class:`ISDRelationalKL` (defaults: the ACTION ACDC script, docs/isd_pretraining.md,
    'Defaults and flags').

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
    divided by their temperatures; the teacher's carries gradient as released), or None for the
    "as_coded_reshape" local term, whose (B*C*pool^2, K*C*pool^2) logits are never materialised
    (:func:`blocked_queue_kl`; :meth:`ISDRelationalKL.local_logits` computes them for inspection);
    ``keys`` the detached teacher embeddings to enqueue, shaped like the queue's rows ((B, D) or
    (B, P, C*pool*pool))."""

    loss: torch.Tensor
    student_logits: torch.Tensor | None
    teacher_logits: torch.Tensor | None
    keys: torch.Tensor


class ISDRelationalKL(nn.Module):
    """Heads, predictors, queues and KL terms of ISD relational distillation (docs/isd_pretraining.md).

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
            raise ConfigError(f"ISDRelationalKL: config must be an ISDConfig, got {type(config).__name__} (build one)")
        for value, what in ((num_classes, "num_classes"), (bottleneck_channels, "bottleneck_channels")):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"ISDRelationalKL.{what}: must be a positive int, got {value!r} (check the model)")
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
            raise DataError(
                f"ISD local term: logits must be (B, {self.num_classes}, {cfg.image_size}, {cfg.image_size}), got "
                f"{tuple(logits.shape)} (set image_size to the training patch side)"
            )
        n = len(self.starts)
        grid = logits.unfold(2, cfg.window, cfg.stride).unfold(3, cfg.window, cfg.stride)[:, :, :n, :n]
        return grid.permute(2, 3, 0, 1, 4, 5).reshape(n * n * logits.shape[0], self.num_classes, cfg.window, cfg.window)

    # ------------------------------------------------------------------ terms

    def global_term(self, student_bottleneck: torch.Tensor, teacher_bottleneck: torch.Tensor) -> RelationalTerm:
        """Global ISD term (docs/isd_pretraining.md, 'Global term').

        student_bottleneck, teacher_bottleneck: float (B, c4, h, w). ``s = Pred(Proj_s(e_s))``,
        ``t = Proj_t(e_t)`` (B, D); logits (B, K) against ``global_queue``; batchmean over B.
        ``keys`` = t detached, (B, D) (stored unnormalised, as released). The queue is read without a
        copy: its normalised rows are a new tensor, so the later in-place enqueue cannot reach autograd.
        """
        cfg = self.config
        student = self.student_predictor(self.student_projector(student_bottleneck))
        teacher = self._teacher(self.teacher_projector, teacher_bottleneck)
        s_logits = cosine_logits(student, self.global_queue, cfg.tau_student)
        t_logits = cosine_logits(teacher, self.global_queue, cfg.tau_teacher)
        return RelationalTerm(relational_kl(s_logits, t_logits), s_logits, t_logits, teacher.detach())

    def local_embeddings(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Window embeddings of the local term (docs/methods.md, 'ISD pretraining: the released local term in
        blocks'): student_logits, teacher_logits float (B, C, S, S) -> student ``Pred_l(h_s(window))``, teacher
        ``h_t(window)``, each float (P*B, C, pool, pool), window-major (:meth:`windows`)."""
        if teacher_logits.shape != student_logits.shape:
            raise DataError(
                f"ISD local term: teacher logits {tuple(teacher_logits.shape)} do not match student logits "
                f"{tuple(student_logits.shape)} (pass both views of the same batch)"
            )
        student = self.student_local_predictor(self.student_local_head(self.windows(student_logits)))
        teacher = self._teacher(self.teacher_local_head, self.windows(teacher_logits))
        return student, teacher

    def _as_coded_rows(self, student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """"as_coded_reshape" rows: embeddings (P*B, C, pool, pool) -> student, teacher (B*C*pool^2, P)
        and the queue (K, P, C*pool^2) -> (K*C*pool^2, P) (transposed to (P, K, ...), then cut; a copy)."""
        p = self.num_windows
        return student.reshape(-1, p), teacher.reshape(-1, p), self.local_queue.transpose(0, 1).reshape(-1, p)

    def local_logits(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The dense local-term logits (for inspection and tests; :meth:`local_term` does not build them
        for "as_coded_reshape"): student, teacher float (N, M), already divided by their temperatures;
        (B*C*pool^2, K*C*pool^2) for "as_coded_reshape", (B*P, K) for "per_patch"."""
        cfg = self.config
        if cfg.local_layout == "per_patch":
            term = self.local_term(student_logits, teacher_logits)
            return term.student_logits, term.teacher_logits
        s_rows, t_rows, queue_rows = self._as_coded_rows(*self.local_embeddings(student_logits, teacher_logits))
        return cosine_logits(s_rows, queue_rows, cfg.tau_student), cosine_logits(t_rows, queue_rows, cfg.tau_teacher)

    def local_term(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> RelationalTerm:
        """Local ISD term on windows of the output logits (docs/isd_pretraining.md, 'Local term').

        student_logits, teacher_logits: float (B, C, S, S). Each of the P windows goes through ``h``
        (the student's also through its predictor): embeddings (P*B, C, pool, pool), window-major
        (:meth:`local_embeddings`).

        * "as_coded_reshape" (as released; docs/isd_pretraining.md, 'Local term as released'): the window-major
          stack is flattened and cut into consecutive chunks of P scalars: student/teacher matrices (B*C*pool^2, P); the queue (K, P,
          C*pool^2) is transposed to (P, K, C*pool^2) and cut the same way: (K*C*pool^2, P). Logits
          (B*C*pool^2, K*C*pool^2), e.g. 1536 x 9216 for C=4, B=6, K=36, P=36, pool=8. The enqueued
          keys are the window-major stack viewed (not permuted) as (B, P, C*pool^2), so a stored "row"
          mixes images. The KL of these logits is evaluated by :func:`blocked_queue_kl` (exactly
          :func:`queue_kl` of the three matrices, value and gradients, in cache-sized row blocks with
          the gradients in closed form), so the (N, M) logits are never materialised and
          ``student_logits`` / ``teacher_logits`` are None (:meth:`local_logits` builds them).
        * "per_patch" (as described): each window's C*pool^2 embedding is compared with the K queued
          embeddings of the *same* window position: logits (B*P, K); keys (B, P, C*pool^2) with entry
          [b, p] = window p of image b. (Our reading of "the same KL per patch embedding against the
          queue"; the papers give no more detail.)

        Batchmean over the rows of the logits. The queue is read without a copy (its normalised rows
        are new tensors; the enqueue after this call cannot reach autograd).
        """
        cfg = self.config
        batch, p = student_logits.shape[0], self.num_windows
        student, teacher = self.local_embeddings(student_logits, teacher_logits)
        if cfg.local_layout == "as_coded_reshape":
            s_rows, t_rows, queue_rows = self._as_coded_rows(student, teacher)
            loss = blocked_queue_kl(s_rows, t_rows, queue_rows, cfg.tau_student, cfg.tau_teacher)
            return RelationalTerm(loss, None, None, teacher.detach().reshape(batch, p, -1))
        dtype = full_precision_dtype(student, teacher, self.local_queue)  # as cosine_logits: no half-precision logits
        with torch.autocast(student.device.type, enabled=False):
            s_emb = F.normalize(student.to(dtype).reshape(p, batch, -1).transpose(0, 1), dim=2)  # (B, P, E)
            t_emb = F.normalize(teacher.to(dtype).reshape(p, batch, -1).transpose(0, 1), dim=2)
            q_emb = F.normalize(self.local_queue.to(dtype), dim=2)  # (K, P, E)
            s_logits = torch.einsum("bpe,kpe->bpk", s_emb, q_emb).reshape(batch * p, -1) / cfg.tau_student
            t_logits = torch.einsum("bpe,kpe->bpk", t_emb, q_emb).reshape(batch * p, -1) / cfg.tau_teacher
        keys = teacher.detach().reshape(p, batch, -1).transpose(0, 1)
        return RelationalTerm(relational_kl(s_logits, t_logits), s_logits, t_logits, keys)

    @torch.no_grad()
    def enqueue(self, global_keys: torch.Tensor, local_keys: torch.Tensor) -> None:
        """FIFO-enqueue the teacher keys of one batch (docs/isd_pretraining.md, 'Queues'): ``global_keys`` (B, D),
        ``local_keys`` (B, P, C*pool^2), both as returned in :attr:`RelationalTerm.keys`."""
        fifo_enqueue_(self.global_queue, self.global_queue_ptr, global_keys)
        fifo_enqueue_(self.local_queue, self.local_queue_ptr, local_keys)

    @torch.no_grad()
    def ema_update_teacher_heads(self, momentum: float) -> None:
        """MONA's extra EMA of the teacher heads from the student heads, ``t <- m t + (1 - m) s``
        (``Proj_t`` from ``Proj_s``, ``h_t`` from ``h_s``; docs/isd_pretraining.md, 'Teacher-side heads';
        ``M:code/model_2D.py:179-182``)."""
        teacher = list(self.teacher_projector.parameters()) + list(self.teacher_local_head.parameters())
        student = list(self.student_projector.parameters()) + list(self.student_local_head.parameters())
        ema_update_(teacher, student, momentum)
