"""``mean_teacher``: supervised loss + ramped softmax-MSE consistency to an EMA teacher.

Tarvainen & Valpola, "Mean teachers are better role models", NeurIPS 2017, in the form of SSL4MIS's
``train_mean_teacher_2D.py`` (the baseline the MONA/ARCO/ACTION papers compare with; docs/baselines.md,
'Mean teacher'), per step:

1. student on ``cat([x_l, x_u])`` (one pass, so BN statistics cover both) -> ``z_l, z_u``;
2. ``L_sup = sup_weight (CE + Dice)`` on ``z_l`` (docs/shared.md, 'Supervised loss');
3. teacher (no grad) on ``x_u + clamp(N(0, s^2), -2s, 2s)``, ``s = input_noise_std`` -> ``z_t``;
   the student sees the clean image; their dropout masks differ;
4. ``L = L_sup + consistency_weight * sigmoid_rampup(step, rampup_steps) * mean((softmax z_u - softmax z_t)^2)``;
5. after the optimiser step: EMA teacher update, ``m = ema_momentum`` (docs/shared.md, 'EMA teacher').

Differences from SSL4MIS, on purpose: the ramp-up runs on the step itself (SSL4MIS quantises it,
``step // 150`` over 200 such units = 30 000 steps, the default ``rampup_steps``), and the EMA has no
``min(1 - 1/(step+1), m)`` warm-up (as in MONA/ARCO/ACTION; docs/shared.md, 'EMA teacher'). SSL4MIS weighs
``L_sup`` by 0.5; the default here is 1.0 like the ``supervised`` baseline and MONA/ARCO.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.ema import BN_MODES, EMATeacher
from methods.losses import sigmoid_rampup, softmax_mse_consistency, supervised_loss
from methods.objective import Batch, LossOutput, Objective, check_choice, check_number, detached, logits_of


@dataclass(frozen=True)
class MeanTeacherConfig:
    """Mean-teacher settings (all validated here).

    * ``sup_weight`` (> 0): ``w`` of ``w (CE + Dice)``.
    * ``ema_momentum`` in [0, 1): teacher EMA momentum (0.99 as released).
    * ``consistency_weight`` (>= 0): final weight of the consistency term (0.1, SSL4MIS).
    * ``rampup_steps`` (int >= 0): sigmoid ramp-up length in steps; 0 = no ramp-up.
    * ``teacher_bn_mode``: "train" (as released in every code base: batch statistics, dropout on, the
      teacher keeps its own BN buffers) or "eval" (running statistics copied from the student at every
      EMA update, no dropout).
    * ``input_noise_std`` (>= 0): std of the Gaussian noise on the teacher's input, clipped at 2 std
      (0.1, SSL4MIS); 0 = no noise.
    """

    sup_weight: float = 1.0
    ema_momentum: float = 0.99
    consistency_weight: float = 0.1
    rampup_steps: int = 30_000
    teacher_bn_mode: str = "train"
    input_noise_std: float = 0.1

    def __post_init__(self) -> None:
        check_number(self, "sup_weight", minimum=0.0, min_inclusive=False)
        check_number(self, "ema_momentum", minimum=0.0, maximum=1.0, max_inclusive=False)
        check_number(self, "consistency_weight", minimum=0.0)
        check_number(self, "rampup_steps", minimum=0, integer=True)
        check_choice(self, "teacher_bn_mode", BN_MODES)
        check_number(self, "input_noise_std", minimum=0.0)


class MeanTeacherObjective(Objective):
    """Mean teacher (see the module docstring). ``self.teacher`` is an :class:`EMATeacher`.

    Logged terms: ``sup`` (weighted), ``ce``, ``dice``, ``consistency`` (unweighted MSE) and
    ``consistency_weight`` (the ramped weight applied this step).
    Randomness (noise, dropout) comes from torch's global RNG, which the engine seeds and checkpoints.
    """

    name = "mean_teacher"
    config_class = MeanTeacherConfig
    requires_unlabelled = True

    def __init__(self, model: torch.nn.Module, config: MeanTeacherConfig | None = None) -> None:
        super().__init__(model, config)
        self.teacher = EMATeacher(
            model, momentum=self.config.ema_momentum, copy_buffers=self.config.teacher_bn_mode == "eval"
        )

    def loss(self, batch: Batch, step: int, max_steps: int) -> LossOutput:
        self.check_batch(batch)
        cfg = self.config
        labelled, unlabelled = batch.labelled_image, batch.unlabelled_image
        logits = logits_of(self.student(torch.cat([labelled, unlabelled], dim=0)))
        logits_l, logits_u = logits[: labelled.shape[0]], logits[labelled.shape[0]:]
        sup, parts = supervised_loss(logits_l, batch.label, cfg.sup_weight)

        teacher_input = unlabelled
        if cfg.input_noise_std > 0:
            noise = torch.randn_like(unlabelled) * cfg.input_noise_std
            teacher_input = unlabelled + noise.clamp(-2 * cfg.input_noise_std, 2 * cfg.input_noise_std)
        teacher_logits = logits_of(self.teacher.predict(teacher_input, cfg.teacher_bn_mode))
        consistency = softmax_mse_consistency(logits_u, teacher_logits)
        weight = cfg.consistency_weight * sigmoid_rampup(step, cfg.rampup_steps)
        total = sup + weight * consistency
        terms = {"sup": sup, **parts, "consistency": consistency, "consistency_weight": sup.new_tensor(weight)}
        return LossOutput(total, detached(terms))

    def after_optimizer_step(self, step: int) -> None:
        self.teacher.update(self.student)
