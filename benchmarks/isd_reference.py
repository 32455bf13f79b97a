"""The dense ISD terms as they were before the blocked local KL (issue 10, item 3), for ``bench_isd.py``.

A copy of the old ``ISDRelationalKL.global_term`` / ``local_term`` (``docs/methods.md`` "ISD pretraining: the released local term in blocks"): the
queue cloned, the (N, M) cosine logits materialised for the student and the teacher (for the
"as_coded_reshape" layout (B*C*pool^2, K*C*pool^2), e.g. 1536 x 9216), and the relational KL by
autograd. :func:`use_dense_reference` makes one :class:`methods.isd.ISDRelationalKL` use them. The
tests keep their own copy (``tests/methods/test_isd_dense.py``).
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F

from methods.isd import ISDRelationalKL, RelationalTerm


def dense_relational_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """``(1/N) sum_n KL(softmax(t_n) || softmax(s_n))`` from (N, M) logits, by autograd."""
    log_q = torch.log_softmax(student_logits, dim=1)
    log_p = torch.log_softmax(teacher_logits, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum() / student_logits.shape[0]


def dense_cosine_logits(x: torch.Tensor, keys: torch.Tensor, tau: float) -> torch.Tensor:
    """x (N, d), keys (M, d) -> (N, M) ``cos / tau``."""
    return F.normalize(x, dim=1) @ F.normalize(keys, dim=1).t() / tau


def dense_global_term(self: ISDRelationalKL, student_bottleneck: torch.Tensor, teacher_bottleneck: torch.Tensor) -> RelationalTerm:
    cfg = self.config
    student = self.student_predictor(self.student_projector(student_bottleneck))
    teacher = self._teacher(self.teacher_projector, teacher_bottleneck)
    queue = self.global_queue.clone()
    s_logits = dense_cosine_logits(student, queue, cfg.tau_student)
    t_logits = dense_cosine_logits(teacher, queue, cfg.tau_teacher)
    return RelationalTerm(dense_relational_kl(s_logits, t_logits), s_logits, t_logits, teacher.detach())


def dense_local_term(self: ISDRelationalKL, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> RelationalTerm:
    cfg = self.config
    batch = student_logits.shape[0]
    p = self.num_windows
    student = self.student_local_predictor(self.student_local_head(self.windows(student_logits)))
    teacher = self._teacher(self.teacher_local_head, self.windows(teacher_logits))
    queue = self.local_queue.clone()
    if cfg.local_layout == "as_coded_reshape":
        queue_rows = queue.transpose(0, 1).reshape(-1, p)
        s_logits = dense_cosine_logits(student.reshape(-1, p), queue_rows, cfg.tau_student)
        t_logits = dense_cosine_logits(teacher.reshape(-1, p), queue_rows, cfg.tau_teacher)
        keys = teacher.detach().reshape(batch, p, -1)
    else:
        s_emb = F.normalize(student.reshape(p, batch, -1).transpose(0, 1), dim=2)
        t_emb = F.normalize(teacher.reshape(p, batch, -1).transpose(0, 1), dim=2)
        q_emb = F.normalize(queue, dim=2)
        s_logits = torch.einsum("bpe,kpe->bpk", s_emb, q_emb).reshape(batch * p, -1) / cfg.tau_student
        t_logits = torch.einsum("bpe,kpe->bpk", t_emb, q_emb).reshape(batch * p, -1) / cfg.tau_teacher
        keys = teacher.detach().reshape(p, batch, -1).transpose(0, 1)
    return RelationalTerm(dense_relational_kl(s_logits, t_logits), s_logits, t_logits, keys)


def use_dense_reference(isd: ISDRelationalKL) -> ISDRelationalKL:
    """Make ``isd`` compute both terms with the dense reference (instance attributes shadow the methods)."""
    isd.global_term = types.MethodType(dense_global_term, isd)
    isd.local_term = types.MethodType(dense_local_term, isd)
    return isd
