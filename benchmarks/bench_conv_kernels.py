"""oneDNN's convolution kernels (PyTorch's CPU default) against PyTorch's own (``torch.backends.mkldnn`` off) on
the CPU: the UNet's forward + backward at several widths and patch sizes, then whole training steps of the quick
profile's methods, the two alternated in one process (benchmarks/RESULTS.md, 'oneDNN or PyTorch's own
convolution kernels').

The two compute the same convolutions with different kernels, so their results differ by float rounding: this
measures speed only. Which ones a trial runs is ``TrialConfig.conv_kernels`` (docs/methods.md, 'CPU convolution
kernels'; the rule of ``"auto"`` comes from these numbers). The steps here run both ways whatever that rule says.

Run:  python benchmarks/bench_conv_kernels.py [--part unet steps] [--methods supervised mona ...] [--steps 30]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_contrast import median_time  # noqa: E402
from bench_methods import PASSES, REPO, _timed_step, build, typical_steps  # noqa: E402
from medseg_platform.recipes import METHODS  # noqa: E402
from medseg_platform.study_flags import count_at_least  # noqa: E402

#: (UNet widths, patch sizes): the quick profile's quarter width, half width, the released width.
UNET_GRID = (
    ((4, 8, 16, 32, 64), (32, 48, 64, 96, 128, 256)),
    ((8, 16, 32, 64, 128), (32, 48, 64, 96, 128, 256)),
    ((16, 32, 64, 128, 256), (48, 64, 96, 128, 256)),
)


def unet_part() -> None:
    """UNet forward + backward of 4 images, each backend twice (alternated), the better of the two medians."""
    import torch

    from methods.unet import UNet

    print("UNet forward + backward, 4 images, 1 thread; ratio = PyTorch's kernels / oneDNN's")
    for channels, patches in UNET_GRID:
        for patch in patches:
            net, image = UNet(channels=channels), torch.randn(4, 1, patch, patch)

            def step() -> None:
                net(image).logits.sum().backward()

            # about 2 s per measurement at the small sizes, at least 3 repeats at the large ones
            repeats = min(40, max(3, int(2000 / (patch * patch / 2304 * channels[0] ** 1.5 * 2))))
            best = {True: float("inf"), False: float("inf")}
            for onednn in (True, False, True, False):
                torch.backends.mkldnn.enabled = onednn
                best[onednn] = min(best[onednn], median_time(step, repeats) * 1e3)
            torch.backends.mkldnn.enabled = True
            print(f"  widths {str(channels):22s} patch {patch:3d}: oneDNN {best[True]:8.1f} ms   "
                  f"PyTorch's {best[False]:8.1f} ms   ratio {best[False] / best[True]:.2f}", flush=True)


def steps_part(methods: list[str], steps: int) -> None:
    """Whole quick-profile training steps (bench_methods.build), the backend switched before every other step."""
    import torch

    print(f"Training steps, quick profile, sparse representations, {steps} steps each way alternated; medians")
    for method in methods:
        bench = build(method, "quick", "sparse")
        times: dict[bool, list[float]] = {True: [], False: []}
        # typical steps only: the NN pool's fill steps and the logged steps cost more (bench_methods.typical_steps)
        for i, step in enumerate(typical_steps(bench, 4 + 2 * steps)):
            onednn = i % 2 == 0
            torch.backends.mkldnn.enabled = onednn
            seconds = _timed_step(bench.objective, bench.optimizer, bench.batch_of, step, bench.max_steps)
            if i >= 4:
                times[onednn].append(seconds)
        torch.backends.mkldnn.enabled = True
        a, b = (statistics.median(times[k]) * 1e3 for k in (True, False))
        print(f"  {method:14s} oneDNN {a:7.1f} ms   PyTorch's {b:7.1f} ms   ratio {b / a:.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", nargs="+", choices=("unet", "steps"), default=["unet", "steps"])
    parser.add_argument("--methods", nargs="+", default=["supervised", "mean_teacher", "mona", "arco_sg", "action", "isd_pretrain"],
                        choices=(*METHODS, "isd_pretrain", *(f"passes:{m}" for m in PASSES)), metavar="METHOD",
                        help="methods of bench_methods.py for the steps part (its --methods names)")
    parser.add_argument("--steps", type=count_at_least(1), default=30, help="timed steps of each backend per method")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    import torch

    from methods.heap import keep_freed_blocks

    torch.set_num_threads(1)
    keep_freed_blocks()  # as a CPU training process does
    if "unet" in args.part:
        unet_part()
    if "steps" in args.part:
        steps_part(args.methods, args.steps)


if __name__ == "__main__":
    main()
