"""The platform's methods, keyed by method id: their table labels and their recipes.

A *recipe* (:func:`method_overrides`) is the dotted config overrides of one table row at a profile's sizes
(:class:`medseg_platform.profiles.Profile`), released settings otherwise. Every study script, ``medseg train``
and the plots' fixed colours name a method by its id here and print :data:`METHOD_LABELS` (one label per method,
written once).
"""

from __future__ import annotations

from medseg_platform.errors import MedsegError
from medseg_platform.profiles import Profile

#: The methods the papers' tables compare, in the order of ARCO's tables: the rows of ``studies/ablation_tailness.py``
#: and ``studies/label_fractions.py``.
PAPER_METHODS = ("supervised", "mean_teacher", "mona", "arco_sg", "arco_sag", "action")
#: Every method a recipe exists for (``medseg train METHOD``, ``benchmarks/``): the papers' methods, then any other
#: (docs/methods.md, 'Adding a method': a new one is trainable by name without joining the papers' tables).
METHODS = PAPER_METHODS
#: The table row label of each method.
METHOD_LABELS = {"supervised": "Supervised only", "mean_teacher": "Mean teacher", "mona": "MONA", "arco_sg": "ARCO-SG",
                 "arco_sag": "ARCO-SAG", "action": "ACTION"}
#: The methods with a pixel-contrast term a row can leave out (``method_overrides(..., without_contrast=True)``); any
#: other method, a newly added one included, refuses such a row.
CONTRASTIVE_METHODS = ("mona", "arco_sg", "arco_sag", "action")
#: The row of supervised training on every label (ARCO's "UNet-F"; ``METHOD_LABELS["supervised"]`` is its "UNet-L").
FULL_SUPERVISION_LABEL = "Supervised, all labels"
#: The row labels of the methods without their pixel-contrast term (``method_overrides(..., without_contrast=True)``).
#: MONA and both ARCOs share one such row, keyed ``mona``: without the contrast term their pipelines are identical,
#: the sampler being the only difference.
WITHOUT_CONTRAST_LABELS = {"mona": "MONA/ARCO w/o L_contrast", "action": "ACTION w/o L_anco"}
#: MONA/ARCO's weights of the unlabelled fine-tuning terms (docs/mona.md, 'Total loss'): a row with all of them at 0
#: trains on L_sup alone (``studies/ablation_losses.py``; priced as such by :func:`medseg_platform.step_costs.cost_key`).
MONA_UNLABELLED_WEIGHTS = ("contrast_weight", "unsup_weight", "eqv_weight", "nn_weight")


def without_term_label(method: str, term: str) -> str:
    """The row label of ``method`` trained without one loss term, e.g. "ARCO-SG w/o L_unsup" (ARCO Table 3's rows:
    ``studies/ablation_losses.py`` and :data:`analysis.published.ARCO_TABLE_3`)."""
    return f"{METHOD_LABELS[method]} w/o {term}"


#: The method of each MONA/ARCO pixel sampler (``objective_params.sampler``): the pipeline is the same, the sampler
#: names the method (docs/arco.md, 'What ARCO changes').
SAMPLER_METHODS = {"uniform": "mona", "stratified": "arco_sg", "stratified_antithetic": "arco_sag"}


def isd_stage(profile: Profile, preset: str) -> dict:
    """One ISD pretraining stage (:data:`methods.isd_pretrain.PRESETS` ``preset``) at the profile's patch, latent size
    and pretraining steps."""
    from methods.isd_pretrain import PRESETS

    patch = profile.trial.data.patch_size[0]
    sizes = {"image_size": patch, "window": patch // 4, "stride": patch // 8, "latent_dim": profile.methods.isd_latent}
    return {"objective": "isd_pretrain", "objective_params": {**PRESETS[preset], **sizes}, "max_steps": profile.methods.pretrain_steps,
            "checkpoint_every": max(1, min(1000, profile.methods.pretrain_steps // 3))}


#: ``objective_params.steps_per_epoch`` of the MONA/ARCO rows: "the trial's own epoch" (floor(N_u / B_u) of its split), which
#: :func:`with_epoch_length` replaces before the objective is built (the engine does it for every trial).
LABELLED_SET_EPOCH = 0


def with_epoch_length(params: dict, steps: int) -> tuple[dict, bool]:
    """``(params, filled)``: a copy of ``params`` whose ``steps_per_epoch`` of :data:`LABELLED_SET_EPOCH` is ``steps``
    (``filled`` True), or ``params`` unchanged (False). The engine passes the trial's released epoch
    (:func:`medseg_platform.data.splits.epoch_steps`); code that builds an objective outside a trial (benchmarks,
    unit tests) passes a number of its own."""
    if params.get("steps_per_epoch") != LABELLED_SET_EPOCH:
        return params, False
    return {**params, "steps_per_epoch": steps}, True


def method_overrides(method: str, profile: Profile, without_contrast: bool = False) -> dict:
    """Dotted config overrides of one table row at a profile's sizes (released settings otherwise).

    * MONA = ARCO's pipeline with the uniform sampler (docs/mona.md, 'MONA and ARCO share one code base'), one ISD
      stage (MONA preset);
    * ARCO-SG / ARCO-SAG: the stratified / stratified-antithetic sampler (docs/arco.md, 'What ARCO changes');
    * ACTION: two ISD stages (stage i: global only, encoder only; stage ii: global + local + 0.5 sup), then
      the anatomical contrast (docs/action.md, 'Pipeline');
    * ``without_contrast``: the pixel-contrast weight 0 (ARCO Table 2's "w/o L_contrast"; the term is not
      computed at all).
    The α_t entropy schedule counts "epochs" of ``steps_per_epoch``; as released an epoch is the trial's own
    unlabelled loader, ``floor(N_u / B_u)`` steps (322 / 311 / 294 at 1 / 3 / 7 released ACDC patients), which
    depends on the dataset and the label fraction (a table column), so the rows set ``steps_per_epoch=0`` and
    the engine fills it in from the trial's labelled subset (:func:`medseg_platform.data.splits.epoch_steps`;
    docs/mona.md, 'Entropy masks and the alpha schedule').
    """
    m, steps = profile.methods, profile.trial.optim.max_steps
    if without_contrast and method not in CONTRASTIVE_METHODS:  # a new method too (it got its own row: the newcomer probe)
        raise MedsegError(f"method {method!r}: has no contrast term to leave out (without_contrast is for MONA, ARCO and ACTION)")
    if method == "supervised":
        return {"objective": "supervised", "objective_params": {}}
    if method == "mean_teacher":
        return {"objective": "mean_teacher", "objective_params": {"rampup_steps": steps}}
    if method in ("mona", "arco_sg", "arco_sag"):
        sampler = {m_id: s for s, m_id in SAMPLER_METHODS.items()}[method]
        params = {"num_anchors": m.anchors, "num_negatives": m.negatives, "bank_capacity_background": m.bank_background,
                  "bank_capacity_foreground": m.bank_foreground, "nn_pool_resolution": m.nn_pool_resolution,
                  "steps_per_epoch": LABELLED_SET_EPOCH, "sampler": sampler}
        if without_contrast:
            params["contrast_weight"] = 0.0
        return {"objective": "arco" if method.startswith("arco") else "mona", "objective_params": params,
                "pretrain": [isd_stage(profile, "mona")]}
    if method == "action":
        params = {"num_queries": m.anchors, "num_negatives": m.negatives, "repr_dim": m.action_repr}
        if without_contrast:
            params["anco_weight"] = 0.0
        return {"objective": "action", "objective_params": params,
                "pretrain": [isd_stage(profile, "action_stage_i"), isd_stage(profile, "action_stage_ii")],
                # ACTION's weak view: resize only, cubic image zoom (docs/action.md, 'Weak view and resizing'); its
                # fine-tuning script sets the poly rate after incrementing the step (docs/shared.md, 'Optimiser and schedule')
                "data.image_resize": "cubic", "data.weak_rot90_flip_p": 0.0, "data.weak_rotate_p": 0.0,
                "optim.lr_step": "aligned"}
    raise MedsegError(f"method {method!r}: unknown (known: {', '.join(METHODS)})")
