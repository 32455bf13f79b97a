"""Exponential-moving-average (EMA) teacher (docs/shared.md, 'EMA teacher').

Update rule, parameters only: ``theta_t <- m * theta_t + (1 - m) * theta_s`` with ``m = 0.99`` (the
released code hard-codes it; no warm-up, no bias correction). The teacher is a deep copy of the student
at construction, with ``requires_grad=False``.

Buffers (BatchNorm running statistics) and the teacher's mode are choices the *objective* makes:

* As released (MONA, ARCO, ACTION, and SSL4MIS's mean teacher), BN buffers are **not** averaged and the
  teacher is **run in train mode**: it normalises with the batch's statistics (and its dropout is
  active) and keeps its own running statistics, which nothing reads. That is
  ``EMATeacher(copy_buffers=False)`` + ``predict(x, bn_mode="train")``.
* A teacher run in eval mode needs meaningful running statistics; its own never move (eval mode does
  not update them), so ``copy_buffers=True`` copies the student's buffers at every :meth:`update`.
  That is ``EMATeacher(copy_buffers=True)`` + ``predict(x, bn_mode="eval")``.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
from torch import nn

from methods.errors import ConfigError

BN_MODES = ("train", "eval")


def check_momentum(value: Any, field: str = "ema_momentum") -> float:
    """Return ``value`` as a float if it is a number in [0, 1); :class:`ConfigError` naming ``field`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise ConfigError(f"{field}: must be a number in [0, 1), got {value!r} (e.g. 0.99)")
    return float(value)


@torch.no_grad()
def ema_update_(teacher: list[torch.Tensor], student: list[torch.Tensor], momentum: float) -> None:
    """``t <- m t + (1 - m) s`` for each pair of tensors, in place, vectorised (``torch._foreach_*``), no host syncs."""
    if teacher:
        torch._foreach_mul_(teacher, momentum)
        torch._foreach_add_(teacher, [s.detach() for s in student], alpha=1.0 - momentum)


class EMATeacher(nn.Module):
    """EMA copy of a student network (docs/shared.md, 'EMA teacher').

    Args:
        student: the network to copy (any ``nn.Module``); it is deep-copied, not shared.
        momentum: ``m`` in [0, 1); 0.99 as released.
        copy_buffers: False (as released): teacher buffers stay the teacher's own; True: copy the
            student's buffers at each :meth:`update` (needed for ``bn_mode="eval"``).

    The teacher network is ``self.module``; its parameters and buffers appear in ``state_dict`` under
    ``module.``.
    """

    def __init__(self, student: nn.Module, momentum: float = 0.99, copy_buffers: bool = False) -> None:
        super().__init__()
        self.momentum = check_momentum(momentum, "ema momentum")
        if not isinstance(copy_buffers, bool):
            raise ConfigError(f"EMATeacher: copy_buffers must be a bool, got {copy_buffers!r} (pass True or False)")
        self.copy_buffers = copy_buffers
        self.module = copy.deepcopy(student)
        self.module.requires_grad_(False)

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        """One EMA step from ``student`` (same architecture as the teacher), vectorised, no host syncs."""
        teacher_params = list(self.module.parameters())
        student_params = list(student.parameters())
        if len(teacher_params) != len(student_params):
            raise ValueError(
                f"EMA update: student has {len(student_params)} parameter tensors, teacher {len(teacher_params)}"
            )
        ema_update_(teacher_params, student_params, self.momentum)
        if self.copy_buffers:
            teacher_buffers = list(self.module.buffers())
            student_buffers = list(student.buffers())
            if len(teacher_buffers) != len(student_buffers):
                raise ValueError(
                    f"EMA update: student has {len(student_buffers)} buffers, teacher {len(teacher_buffers)}"
                )
            if teacher_buffers:
                torch._foreach_copy_(teacher_buffers, student_buffers)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, bn_mode: Literal["train", "eval"] = "train") -> Any:
        """Run the teacher without gradient in ``bn_mode`` ("train": batch statistics and dropout, as
        released; "eval": running statistics, no dropout). Returns whatever the network returns."""
        if bn_mode not in BN_MODES:
            raise ConfigError(f"EMATeacher.predict: bn_mode {bn_mode!r} is not a choice (use one of {list(BN_MODES)})")
        training = bn_mode == "train"
        if self.module.training != training:  # train() walks every submodule; the teacher's are only set through here
            self.module.train(training)
        return self.module(x)
