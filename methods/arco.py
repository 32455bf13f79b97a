"""``arco``: ARCO fine-tuning = the MONA pipeline with stratified sampling.

Paper: You et al., "Rethinking Semi-Supervised Medical Image Segmentation: A Variance-Reduction Perspective",
NeurIPS 2023. The released MONA repository *is* the ARCO repository: MONA fine-tuning is ARCO with the uniform
sampler ("ARCO-NS"). :class:`ArcoObjective` is therefore :class:`methods.mona.MonaObjective` with another
default sampler: ``"stratified"`` (ARCO-SG, ``--func smc``); ``sampler="stratified_antithetic"`` is ARCO-SAG
(``asmc``). Every other setting, loss term and flag is :class:`methods.mona.MonaConfig`'s; the samplers are in
:mod:`methods.samplers`, the contrast in :mod:`methods.u2pl`. Described in docs/arco.md, 'What ARCO changes'
and docs/mona.md, 'MONA and ARCO share one code base'.
"""

from __future__ import annotations

from dataclasses import dataclass

from methods.mona import MonaConfig, MonaObjective


@dataclass(frozen=True)
class ArcoConfig(MonaConfig):
    """:class:`MonaConfig` with ARCO's released sampler, ``"stratified"`` (SG, ``--func smc``;
    docs/arco.md, 'Stratified group sampling (SG)')."""

    sampler: str = "stratified"


class ArcoObjective(MonaObjective):
    """ARCO (docs/arco.md, 'What ARCO changes'): the MONA pipeline with stratified sampling (default
    ``"stratified"`` = ARCO-SG; ``sampler="stratified_antithetic"`` = ARCO-SAG). Config: :class:`ArcoConfig`."""

    name = "arco"
    config_class = ArcoConfig
