"""Models, losses and training objectives: the bottom floor of the project.

Import floor: ``methods`` imports only the standard library, torch, numpy and ``methods.*``; the floors above
(``medseg_platform``, then ``analysis``, then ``studies``) import from it, never the other way
(``tests/test_import_floors.py`` enforces it). Nothing here knows about files, Ray or the command line:
an objective gets a :class:`methods.objective.Batch` of tensors and returns a loss.

Interface and registry

* :mod:`methods.objective`: the :class:`~methods.objective.Objective` interface the engine drives (``loss``,
  ``after_optimizer_step``, ``eval_model``), :class:`~methods.objective.Batch`, the ``StrongAugment`` protocol
  and the config-validation helpers.
* :mod:`methods.registry`: names in configs -> classes (``build_objective``, ``objective_config``,
  ``build_model``).
* :mod:`methods.errors`: :class:`~methods.errors.MedsegError`, :class:`~methods.errors.ConfigError` and
  :class:`~methods.errors.DataError`, the one-line errors for bad configuration or data (re-exported by
  :mod:`medseg_platform.errors`).

Objectives (one module each, registered under the module's name)

* :mod:`methods.supervised`: labelled-only CE + Dice.
* :mod:`methods.mean_teacher`: mean teacher (EMA teacher, ramped softmax-MSE consistency).
* :mod:`methods.isd_pretrain`: ISD relational pretraining (ACTION stages i/ii, MONA/ARCO stage 1), with the
  relational KL terms in :mod:`methods.isd`.
* :mod:`methods.action`: ACTION fine-tuning with anatomical contrast.
* :mod:`methods.mona`: MONA fine-tuning (pseudo-labels, U2PL contrast, equivariance and nearest-neighbour losses).
* :mod:`methods.arco`: ARCO = the MONA pipeline with stratified samplers.

Building blocks

* :mod:`methods.unet`: the 2D UNet (logits, bottleneck and decoder pyramid).
* :mod:`methods.heads`: representation heads on the decoder pyramid (MONA's FE/Pred, ACTION's projection).
* :mod:`methods.ema`: the EMA teacher.
* :mod:`methods.losses`: supervised, pseudo-label and consistency losses.
* :mod:`methods.contrast`: pixel InfoNCE, entropy masks and their schedule, ACTION's relation-graph sampling,
  class prototypes.
* :mod:`methods.u2pl`: the U2PL memory-bank contrast of MONA/ARCO; :mod:`methods.memory_bank`: its per-class
  FIFO banks.
* :mod:`methods.recompute`: keeps the gathered bank negatives out of autograd's saved tensors (gathered
  again in backward).
* :mod:`methods.nn_pool`: MONA's full-resolution NN pool stored as teacher pyramids and ``FE_t`` weights
  (docs/methods.md, 'A compact full-resolution NN pool').
* :mod:`methods.samplers`: uniform, stratified and stratified-antithetic index samplers.
* :mod:`methods.pixel_reps`: pixel representations read where the losses need them (dense maps or straight
  from the pyramid; docs/methods.md, 'Sparse representations'), and the one pixel gather.
* :mod:`methods.tps`: random thin-plate-spline warps of MONA's equivariance loss.
* :mod:`methods.intensity`: the released 8-bit intensity round trip shared with the data layer.
"""
