"""Benchmark: vectorised pixel InfoNCE vs a per-anchor Python loop at the paper size (docs/action.md,
'Anatomical contrast'; docs/mona.md, 'U2PL contrast').

Paper size, per class: 256 anchors x 512 negatives x 512-d (ACTION's head width; MONA's is 496), one
shared positive (the class prototype), τ = 0.5; 4 classes (ACDC, background included), loss averaged over
classes as both methods do. Inputs are random; anchors require grad, positive and negatives are detached
(as in the objectives). Timed, per call of the 4-class loss:

* ours:      :func:`methods.contrast.pixel_info_nce`, once per class (also with
             ``negatives_normalized=True`` on keys normalised beforehand, which skips the norm pass);
* loop:      the reference written here: for every class, for every anchor, cosine similarities to
             ``[positive, its 512 negatives]`` and a 1-row cross-entropy (1024 iterations);
* released:  for context, the released ReCo/U2PL vectorised form (``torch.cosine_similarity`` of the anchors
             against ``cat([positive repeated, negatives])``), which materialises (N, 1+K, D) tensors.

Each is timed forward only and forward+backward (gradient w.r.t. the anchors). Peak memory = the peak
resident-set growth over the inputs while one forward+backward runs (Linux ``VmHWM`` reset through
``/proc/self/clear_refs``, after ``malloc_trim`` has returned freed heap pages to the OS so that reused pages
do not hide the growth). Printed: median seconds, speed-up of ours over the
loop, max |ours - loop| of the loss and of the anchor gradients, peak memory. A smaller section times the
other building blocks at paper size (relation-graph negative sampling, memory-bank enqueue + sampling).

Run:  .venv/bin/python benchmarks/bench_contrast.py [--repeats 5] [--loop-repeats 2] [--threads 1] [--smoke]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from methods.contrast import pixel_info_nce, relation_graph_probs, relation_negative_indices  # noqa: E402
from methods.memory_bank import ClassMemoryBank  # noqa: E402
from medseg_platform.study_flags import count_at_least  # noqa: E402

TAU = 0.5


def _release_free_heap() -> bool:
    """Give freed heap pages back to the OS (glibc ``malloc_trim``) so they do not hide the next peak."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        return True
    except (OSError, AttributeError):
        return False


def _status_kib(key: str) -> int | None:
    try:
        match = re.search(rf"{key}:\s+(\d+) kB", Path("/proc/self/status").read_text())
    except OSError:
        return None
    return int(match.group(1)) if match else None


def peak_extra_mib(fn: Callable[[], object]) -> float | None:
    """Peak RSS growth (MiB) while ``fn`` runs, over the RSS before it (None where /proc is unavailable)."""
    gc.collect()
    _release_free_heap()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    before = _status_kib("VmRSS")
    result = fn()
    peak = _status_kib("VmHWM")
    del result
    if before is None or peak is None:
        return None
    return (peak - before) / 1024


def loop_reference(anchors, positive, negatives, tau):
    """Per-anchor Python loop: cosine to [positive, negatives_k], CE with target 0, mean over anchors."""
    losses = []
    target = torch.zeros(1, dtype=torch.long)
    for k in range(anchors.shape[0]):
        keys = torch.cat([positive.unsqueeze(0), negatives[k]], dim=0)              # (1 + K, D)
        logits = F.cosine_similarity(anchors[k].unsqueeze(0), keys, dim=1) / tau     # (1 + K,)
        losses.append(F.cross_entropy(logits.unsqueeze(0), target))
    return torch.stack(losses).mean()


def released_style(anchors, positive, negatives, tau):
    """The released ReCo/U2PL form: concatenate [positive | negatives] and call cosine_similarity."""
    n = anchors.shape[0]
    keys = torch.cat([positive.view(1, 1, -1).repeat(n, 1, 1), negatives], dim=1)      # (N, 1 + K, D)
    logits = torch.cosine_similarity(anchors.unsqueeze(1), keys, dim=2) / tau
    return F.cross_entropy(logits, torch.zeros(n, dtype=torch.long))


def multi_class(loss_fn, anchors, positives, negatives):
    return sum(loss_fn(a, p, n, TAU) for a, p, n in zip(anchors, positives, negatives)) / len(anchors)


def median_time(fn: Callable[[], object], repeats: int, warmup: bool = True) -> float:
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=count_at_least(2), default=4, help="classes with background (at least 2)")
    parser.add_argument("--anchors", type=count_at_least(1), default=256)
    parser.add_argument("--negatives", type=count_at_least(1), default=512)
    parser.add_argument("--dim", type=count_at_least(1), default=512)
    parser.add_argument("--repeats", type=count_at_least(1), default=5)
    parser.add_argument("--loop-repeats", type=count_at_least(1), default=2)
    parser.add_argument("--threads", type=count_at_least(1), default=1,
                        help="torch threads (1: stable numbers on a shared 2-core machine, where 2 threads "
                             "oversubscribe as soon as another process runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat (checks the script runs)")
    args = parser.parse_args()
    if args.smoke:
        args.anchors, args.negatives, args.dim, args.repeats, args.loop_repeats = 16, 32, 16, 1, 1
    torch.set_num_threads(args.threads)
    trim = _release_free_heap()

    gen = torch.Generator().manual_seed(args.seed)
    c, n, k, d = args.classes, args.anchors, args.negatives, args.dim
    anchors = [torch.randn(n, d, generator=gen) for _ in range(c)]
    positives = [torch.randn(d, generator=gen) for _ in range(c)]
    negatives = [torch.randn(n, k, d, generator=gen) for _ in range(c)]
    gib = c * n * k * d * 4 / 2**30
    print(f"pixel InfoNCE, {c} classes x {n} anchors x {k} negatives x {d}-d, tau={TAU} "
          f"(negatives {gib:.2f} GiB); torch {torch.__version__}, {torch.get_num_threads()} threads")

    def forward(loss_fn, negs=negatives):
        with torch.no_grad():
            return multi_class(loss_fn, anchors, positives, negs)

    def forward_backward(loss_fn, negs=negatives):
        leaves = [a.clone().requires_grad_(True) for a in anchors]
        loss = multi_class(loss_fn, leaves, positives, negs)
        grads = torch.autograd.grad(loss, leaves)
        return loss.detach(), grads

    rows = []
    unit_negatives = [F.normalize(neg, dim=-1) for neg in negatives]

    def ours_prenormalised(a, p, n, tau):
        # the caller normalised the keys once (e.g. at enqueue); n here is one of unit_negatives
        return pixel_info_nce(a, p, n, tau, negatives_normalized=True)

    variants = (
        ("ours (pixel_info_nce)", pixel_info_nce, negatives, args.repeats, True),
        ("ours, negatives_normalized=True", ours_prenormalised, unit_negatives, args.repeats, True),
        # 1024 iterations of small ops: nothing to warm up, and slow
        ("loop (per anchor)", loop_reference, negatives, args.loop_repeats, False),
        ("released-style concat", released_style, negatives, args.loop_repeats, True),
    )
    for name, fn, negs, repeats, warmup in variants:
        t_fwd = median_time(lambda: forward(fn, negs), repeats, warmup)
        t_fb = median_time(lambda: forward_backward(fn, negs), repeats, warmup)
        mem = peak_extra_mib(lambda: forward_backward(fn, negs))
        rows.append((name, t_fwd, t_fb, mem))
    del unit_negatives

    ours_loss, ours_grad = forward_backward(pixel_info_nce)
    loop_loss, loop_grad = forward_backward(loop_reference)
    rel_loss, _ = forward_backward(released_style)
    value_diff = (ours_loss - loop_loss).abs().item()
    grad_diff = max((a - b).abs().max().item() for a, b in zip(ours_grad, loop_grad))

    print("\n| variant | forward, s | forward+backward, s | peak extra memory, MiB |")
    print("| --- | --- | --- | --- |")
    for name, t_fwd, t_fb, mem in rows:
        mem_text = "n/a" if mem is None else f"{mem:.0f}"
        print(f"| {name} | {t_fwd:.4f} | {t_fb:.4f} | {mem_text} |")
    ours, loop = rows[0], rows[2]
    print(f"\nspeed-up ours vs loop: forward {loop[1] / ours[1]:.1f}x, forward+backward {loop[2] / ours[2]:.1f}x "
          f"(target >= 5x)")
    print(f"loss: ours {ours_loss.item():.6f}, loop {loop_loss.item():.6f}, released-style {rel_loss.item():.6f}; "
          f"max |ours - loop| = {value_diff:.2e} (loss), {grad_diff:.2e} (anchor gradients)")
    if not trim:
        print("note: malloc_trim unavailable; peak memory may under-count reused heap pages")

    # -- other building blocks at paper size -------------------------------------------------------------
    print("\nother building blocks (median seconds):")
    pool_sizes = [20000 if not args.smoke else 50] * (c - 1)  # one pool per other class: --classes 2 or 3 failed here
    pools = torch.randn(sum(pool_sizes), d, generator=gen)
    protos = torch.randn(c, d, generator=gen)
    probs = relation_graph_probs(protos, 0, TAU)[: len(pool_sizes)]
    probs = probs / probs.sum()

    def relation_sample():
        index = relation_negative_indices(pool_sizes, probs, n, k, generator=gen)
        return pools.index_select(0, index.flatten()).view(n, k, d)

    print(f"  relation-graph negatives ({n}x{k} from {len(pool_sizes)} pools of {pool_sizes[0]} keys, gather included): "
          f"{median_time(relation_sample, args.repeats):.4f}")
    capacity = 30000 if not args.smoke else 100
    bank = ClassMemoryBank(1, d, capacity)
    batch_keys = torch.randn(5000 if not args.smoke else 30, d, generator=gen)

    def bank_step():
        bank.enqueue(0, batch_keys)
        positions = torch.randint(0, bank.size(0), (n * k,), generator=gen)
        return bank.gather(0, positions).view(n, k, d)

    print(f"  memory bank: enqueue {batch_keys.shape[0]} keys + gather {n}x{k} uniform negatives "
          f"(capacity {capacity}): {median_time(bank_step, args.repeats):.4f}")


if __name__ == "__main__":
    main()
