#!/usr/bin/env bash
# The GPU checks of this project as one script, for a lent GPU machine with PyTorch but without Ray (none of these
# parts imports Ray): run from the repository root as  bash benchmarks/gpu_check.sh OUT_DIR
# Parts, most important first, each under its own time limit so that one hang does not lose the others:
#   1. bench_gpu.py steps: every method's paper-size step, fp32 and bf16, sparse and dense; peak GPU memory
#   2. the same for MONA and ARCO-SG in fp32 without TF32 and without cuDNN autotuning (their sparse-vs-dense
#      agreement and MONA's dense fill-step peak: benchmarks/RESULTS.md, 'One GPU'), and MONA / ACTION under fp16
#      autocast (finite loss terms at the paper size: docs/methods.md, 'Class means in full precision under mixed precision')
#   3. bench_gpu.py concurrent: 1, 2, 4, 8 MONA paper-size trials sharing the GPU
#   4. the suite's CUDA tests (tests/test_gpu_path.py and the 'cuda' tests of intensity, samplers, AdvMorph, augment)
#   5. a quick MONA trial end to end on the GPU through `medseg train --in-process`
# The tables and the status of each part go to OUT_DIR/summary.txt (and are printed); every log, JSON row and
# trial result file goes to OUT_DIR/gpu_check.tar.gz. GPU_CHECK_DEVICE=cpu GPU_CHECK_PROFILE=quick
# GPU_CHECK_TRIAL_PROFILE=smoke checks the script itself on a machine without a GPU.
set -u
out=${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR}
case "$out" in
    -h|--help) sed -n '2,/^set -u/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "gpu_check.sh: unknown option $out (usage: bash benchmarks/gpu_check.sh OUT_DIR)" >&2; exit 2 ;;
esac
device=${GPU_CHECK_DEVICE:-cuda} profile=${GPU_CHECK_PROFILE:-paper} trial_profile=${GPU_CHECK_TRIAL_PROFILE:-quick}
if [ "$device" = cuda ] && ! python3 -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check.sh: no CUDA GPU here (torch.cuda.is_available() is False, or torch is missing); on a machine without one, check the script" \
         "itself with GPU_CHECK_DEVICE=cpu GPU_CHECK_PROFILE=quick GPU_CHECK_TRIAL_PROFILE=smoke" >&2
    exit 2
fi
out=$(mkdir -p -- "$out" && cd -- "$out" && pwd) || exit 2
work=$(mktemp -d /tmp/gpu_check.XXXXXX)
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 MEDSEG_CACHE="$work/cache"
cd "$(dirname "$0")/.."

child=
finish() {  # on every exit, a kill included: what the parts wrote so far reaches OUT_DIR, and the work folder goes
    {
        for f in gpu.txt steps.txt steps-plain.txt steps-fp16.txt concurrent.txt; do [ -f "$work/$f" ] && cat "$work/$f"; done
        [ -f "$work/pytest.txt" ] && tail -n 5 "$work/pytest.txt"
        grep -hs "^trial " "$work"/trial-*.log
        cat "$work/status.txt" 2>/dev/null
    } >"$out/summary.txt"
    tar -czf "$out/gpu_check.tar.gz" -C "$work" --exclude=cache --exclude=pretrain-cache --exclude='*.pt' .
    rm -rf "$work"
    cat "$out/summary.txt"
    echo "(every log and result file: $out/gpu_check.tar.gz)"
}
stopped() {  # timeout runs its command in a process group of its own: a signal to this script must be passed on
    [ -n "$child" ] && kill -TERM "$child" 2>/dev/null && wait "$child"
    echo "stopped by a signal during the part above" | tee -a "$work/status.txt"
    exit 130
}
trap finish EXIT
trap stopped INT TERM
part() {  # part LIMIT_S STDOUT STDERR COMMAND...: one part under its own time limit
    local limit=$1 stdout=$2 stderr=$3
    shift 3
    if [ "$stderr" = "$stdout" ]; then timeout "$limit" "$@" >"$stdout" 2>&1 & else timeout "$limit" "$@" >"$stdout" 2>"$stderr" & fi
    child=$!
    wait "$child"
    local rc=$?
    child=
    return $rc
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"; } | tee "$work/gpu.txt"
python3 -c "import torch, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'numpy', numpy.__version__)" | tee -a "$work/gpu.txt"

# the limits add up to 540 s, under the lent machine's 600 s a command
part 180 "$work/steps.txt" "$work/steps.log" \
    python3 benchmarks/bench_gpu.py --device "$device" --profile "$profile" --parts steps --steps 12 --warmup 3 --json "$work/steps.jsonl"
echo "steps: exit $?" | tee -a "$work/status.txt"
part 50 "$work/steps-plain.txt" "$work/steps-plain.log" \
    python3 benchmarks/bench_gpu.py --device "$device" --profile "$profile" --parts steps --steps 8 --warmup 3 --amp off \
    --methods supervised mona arco_sg --no-tf32 --no-cudnn-benchmark --json "$work/steps.jsonl"
echo "steps without TF32 and autotuning: exit $?" | tee -a "$work/status.txt"
part 50 "$work/steps-fp16.txt" "$work/steps-fp16.log" \
    python3 benchmarks/bench_gpu.py --device "$device" --profile "$profile" --parts steps --steps 3 --warmup 1 --amp fp16 \
    --representation sparse --methods supervised mona action --json "$work/steps.jsonl"
echo "fp16 steps (finite terms: steps-fp16.txt): exit $?" | tee -a "$work/status.txt"
part 110 "$work/concurrent.txt" "$work/concurrent.log" \
    python3 benchmarks/bench_gpu.py --device "$device" --profile "$profile" --parts concurrent --concurrent 1 2 4 8 --steps 10 --warmup 3 \
    --json "$work/concurrent.jsonl"
echo "concurrent: exit $?" | tee -a "$work/status.txt"
part 70 "$work/pytest.txt" "$work/pytest.txt" \
    python3 -m pytest -q -p no:cacheprovider -k "cuda or every_device" tests/test_gpu_path.py tests/methods/test_intensity.py \
    tests/methods/test_samplers.py tests/data/test_advmorph.py tests/data/test_augment.py
echo "pytest: exit $?" | tee -a "$work/status.txt"
start=$SECONDS
part 80 "$work/trial-mona.log" "$work/trial-mona.log" \
    python3 -m analysis.console train mona --profile "$trial_profile" --in-process --set "optim.amp=off" --results-dir "$work/trials"
echo "trial mona (off): exit $?, $((SECONDS - start)) s" | tee -a "$work/status.txt"
