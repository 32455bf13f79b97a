"""Benchmark: the class-axis maximum of (B, C, H, W) scores, and a quick validation before and after it.

Part 1 times ``torch.argmax(dim=1)``, ``torch.max(dim=1)`` and :func:`methods.class_max.class_max` on logits of the
quick profile's validation batches and of the paper size, and checks the three give the same indices (values too,
for ``torch.max``). Part 2 times one validation of the quick profile (the embedded phantom's 8 val volumes, a random
quarter-width UNet in train mode as the trial hands it over) as the engine ran it before (``torch.argmax`` and a
train/eval switch of the model around every volume) and as it runs now (``class_argmax``, one switch around all
volumes), alternated in one process, and checks the two scores are equal to the bit. 1 thread, as a trial runs.

Run:  python benchmarks/bench_class_max.py [--repeats 9]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_validation, beside this file

from medseg_platform.study_flags import count_at_least  # noqa: E402


def reductions(repeats: int) -> None:
    import torch

    from bench_contrast import median_time
    from methods.class_max import class_max

    print("shape                 argmax(dim=1)   max(dim=1)   class_max   same")
    for shape in ((8, 4, 48, 48), (16, 4, 48, 48), (4, 4, 256, 256), (16, 4, 256, 256)):
        scores = torch.randn(*shape)
        times = [median_time(lambda f=f: f(scores), repeats) * 1e6 for f in (lambda s: s.argmax(1), lambda s: torch.max(s, 1),
                                                                             class_max)]
        values, index = torch.max(scores, 1)
        fast_values, fast_index = class_max(scores)
        same = torch.equal(index, scores.argmax(1)) and torch.equal(index, fast_index) and torch.equal(values, fast_values)
        print(f"{str(shape):20s}  {times[0]:10.0f} us  {times[1]:8.0f} us  {times[2]:7.0f} us   {same}")


def validation(repeats: int) -> None:
    import torch

    import medseg_platform.engine.evaluate as evaluate
    import medseg_platform.evaluation.predict as predict
    from bench_validation import quick_validation

    cfg, volumes, model = quick_validation()
    model.train()
    device = torch.device("cpu")
    fast_argmax, fast_eval_mode = predict.class_argmax, evaluate.eval_mode

    def before() -> float:  # torch.argmax, and predict_volume switching the model's mode around every volume
        predict.class_argmax, evaluate.eval_mode = (lambda s: s.argmax(1)), (lambda m: contextlib.nullcontext(m))
        try:
            return evaluate.validation_dice(model, volumes, cfg, device)
        finally:
            predict.class_argmax, evaluate.eval_mode = fast_argmax, fast_eval_mode

    def after() -> float:
        return evaluate.validation_dice(model, volumes, cfg, device)

    old, new, scores = [], [], set()
    for _ in range(repeats + 1):  # the first round warms up
        for fn, times in ((before, old), (after, new)):
            t0 = time.perf_counter()
            scores.add(fn())
            times.append(time.perf_counter() - t0)
    a, b = statistics.median(old[1:]), statistics.median(new[1:])
    print(f"one quick validation ({len(volumes)} val volumes, random UNet), median of {repeats}: before {a * 1e3:.1f} ms, "
          f"now {b * 1e3:.1f} ms ({b / a:.2f}x); scores equal: {len(scores) == 1}; the model back in train mode: {model.training}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=count_at_least(1), default=9)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    reductions(args.repeats)
    validation(args.repeats)


if __name__ == "__main__":
    main()
