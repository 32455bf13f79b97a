"""The Tune layer: a Study (many trials of one base config) run as a Ray Tune experiment.

One job per module:

* :mod:`~medseg_platform.study.spec` -- the study spec (:class:`Study`, :class:`Variant`): expansion into validated
  trial configs, the experiment's spec hash, ``study.json`` (:meth:`Study.description`) and the start order;
* :mod:`~medseg_platform.study.runner` -- :meth:`Study.run`: checks before Ray starts, the skip of finished trials,
  the Tune experiment (run or restore; grid, Optuna TPE with its journal, ASHA) and :class:`StudyRun`;
* :mod:`~medseg_platform.study.ray_runtime` -- starting or joining Ray (dashboard), the GPU check, a trial's placement;
* :mod:`~medseg_platform.study.trainable` -- the Tune function trainable and the one "train this rank of a trial and
  write its results" function that single-worker trials, every worker of a multi-worker trial and ``medseg train
  --in-process`` share; which failures are application errors (never retried);
* :mod:`~medseg_platform.study.distributed` -- a multi-worker trial on Ray Train workers.

The trial folders are :mod:`medseg_platform.results`'s; a trial whose ``result.json`` is complete is never trained
again, whatever Ray's state says.
"""

from medseg_platform.study.runner import StudyRun
from medseg_platform.study.spec import ASHA_TIME, METRIC, Study, Variant

__all__ = ["ASHA_TIME", "METRIC", "Study", "StudyRun", "Variant"]
