"""MONA/ARCO's L_eqv with its warped student pass kept out of BatchNorm's running statistics: which part of L_eqv's cost
at the quick profile is its gradient and which the warped images in the statistics evaluation uses
(``benchmarks/RESULTS.md``, "The loss terms at the quick profile").

Trains the runs of ``benchmarks/run_trials.py`` (same ``METHOD LABELLED SEED [KEY=VALUE ...]`` words, in-process, one
at a time) with one change: while the student runs on the TPS-warped batch of L_eqv (the tensor
:func:`methods.mona.apply_warp` returned for the student's input), every BatchNorm layer of the student has momentum 0,
so its running mean and variance stay as they were (the pass still normalises with its batch statistics, and its
dropout draws the same random numbers). Everything else is the released step. Prints one JSON line per run, as
``run_trials.py`` does, plus ``frozen_passes`` (warped passes seen; 0 would mean the run had no L_eqv).

    python benchmarks/eqv_batchnorm.py --work /tmp/eqv mona 1 1 objective_params.contrast_weight=0 \\
        objective_params.unsup_weight=0 objective_params.eqv_weight=1e-6

Use a ``--work`` folder of its own: a finished trial of the same configuration there would be reused, not retrained.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))


def freeze_batchnorm_on_warped_passes() -> dict:
    """Patch :mod:`methods.mona` so that the student's pass on the warped batch leaves its BatchNorm statistics as they
    were; returns the counter of such passes (``{"frozen_passes": n}``)."""
    import torch

    import methods.mona as mona

    seen = {"frozen_passes": 0}
    warped: list[torch.Tensor] = []
    original_warp, original_init = mona.apply_warp, mona.MonaObjective.__init__

    def apply_warp(*args, **kwargs):
        out = original_warp(*args, **kwargs)
        warped[:] = [out]  # the latest warp's output; the student's input is the first of a step's three
        return out

    def init(self, model, config=None):
        original_init(self, model, config)
        norms = [m for m in self.student.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        saved: dict = {}

        def before(module, inputs):
            if warped and inputs and inputs[0] is warped[0]:
                saved.update({bn: bn.momentum for bn in norms})
                for bn in norms:
                    bn.momentum = 0.0  # running = 1 x running + 0 x batch
                seen["frozen_passes"] += 1

        def after(module, inputs, output):
            for bn, momentum in saved.items():
                bn.momentum = momentum
            saved.clear()

        self.student.register_forward_pre_hook(before)
        self.student.register_forward_hook(after)

    mona.apply_warp, mona.MonaObjective.__init__ = apply_warp, init
    return seen


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", nargs="+", help="METHOD LABELLED SEED [KEY=VALUE ...] (as benchmarks/run_trials.py)")
    parser.add_argument("--work", type=Path, required=True, help="trial folders and the pretraining cache (a folder of its own)")
    args = parser.parse_args(argv)
    if len(args.run) < 3:
        parser.error("give METHOD LABELLED SEED [KEY=VALUE ...]")
    import torch

    from run_trials import run_one

    torch.set_num_threads(1)
    seen = freeze_batchnorm_on_warped_passes()
    print(json.dumps({**run_one(args.run, args.work), **seen}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
