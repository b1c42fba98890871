#!/usr/bin/env bash
# One-shot GPU check of the Triton kernels (issues 7 and 13), from the repo root of a checkout, project not
# installed:
#
#   bash benchmarks/gpu_check.sh              # on the GPU machine: ~3-5 minutes on an H200
#   PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh --dry-run   # on a CPU: checks this script's logic
#
# 1. the kernel test files on CUDA (pytest + hypothesis; the same files CI runs under the interpreter),
# 2. benchmarks/resample_gpu.py: resampling vs torch multinomial + gather (both launch paths), bandwidth vs a D2D
#    copy, ancestor kernel per scheme, gather launch configs, the fused affine step vs torch, CUDA-graph replay;
#    then the speed check: resample is never slower than torch at any measured size (a table and PASS/FAIL),
# 3. benchmarks/processor_gpu.py: TTSLogitsProcessor's per-step cost (thinking control + First Finish
#    components, B = 64 / 256, Qwen-sized vocabulary) vs a softmax and a top-p sampling step, and a check that
#    admission, steps and release never synchronise (torch.cuda.set_sync_debug_mode("error")).
# Results go to $OUT (default build/gpu_check): env.txt, pytest.txt, pytest.xml, benchmark.txt,
# resample_gpu.json, resample_gpu_<section>.csv, processor.txt, processor_gpu.json. Every step always runs; the
# exit status is non-zero if any failed or the speed check failed, and the last line says which.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; fi
if [[ -z "${PYTHON:-}" ]]; then  # the first interpreter that has torch
    for candidate in python3 python; do
        if command -v "$candidate" >/dev/null && "$candidate" -c "import torch" 2>/dev/null; then
            PYTHON=$(command -v "$candidate"); break
        fi
    done
fi
PYTHON=${PYTHON:-python3}
OUT=${OUT:-$ROOT/build/gpu_check}
mkdir -p "$OUT"

# `ttsplugin_kernels` is the kernels/ folder: expose it under that name without installing anything.
SHIM=$(mktemp -d)
trap 'rm -rf "$SHIM"' EXIT
ln -s "$ROOT/kernels" "$SHIM/ttsplugin_kernels"
export PYTHONPATH="$SHIM:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$ROOT/build/cache/triton}  # tests and benchmark share compiles

{
    date -u +"%Y-%m-%dT%H:%M:%SZ"
    git -C "$ROOT" rev-parse HEAD 2>/dev/null || true
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
    "$PYTHON" -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.cuda.is_available())"
} 2>&1 | tee "$OUT/env.txt"

echo "== 1/3 kernel tests ($([[ $DRY_RUN == 1 ]] && echo 'CPU interpreter, subset' || echo CUDA))"
TEST_ARGS=(tests/test_kernels_resample.py tests/test_kernels_affine_step.py -q -p no:cacheprovider --durations=10
    --junitxml "$OUT/pytest.xml")
if [[ $DRY_RUN == 1 ]]; then
    TEST_ARGS+=(-k "identical_to_reference or size_dispatch or kernel_matches or per_row_coefficients")
fi
timeout 240 "$PYTHON" -m pytest "${TEST_ARGS[@]}" 2>&1 | tee "$OUT/pytest.txt"
TESTS_RC=${PIPESTATUS[0]}

echo "== 2/3 benchmark"
BENCH_ARGS=(--out-dir "$OUT")
if [[ $DRY_RUN == 1 ]]; then BENCH_ARGS+=(--dry-run); fi
timeout 240 "$PYTHON" benchmarks/resample_gpu.py "${BENCH_ARGS[@]}" 2>&1 | tee "$OUT/benchmark.txt"
BENCH_RC=${PIPESTATUS[0]}
SPEED=$(grep -o "^speed check: [A-Za-z/]*" "$OUT/benchmark.txt" | tail -1 | cut -d' ' -f3)

echo "== 3/3 logits processor per step"
PROC_ARGS=(--out-dir "$OUT")
if [[ $DRY_RUN == 1 ]]; then PROC_ARGS+=(--dry-run); fi
timeout 120 "$PYTHON" benchmarks/processor_gpu.py "${PROC_ARGS[@]}" 2>&1 | tee "$OUT/processor.txt"
PROC_RC=${PIPESTATUS[0]}

verdict() { if [[ $1 == 0 ]]; then echo ok; elif [[ $1 == 124 ]]; then echo "TIMED OUT"; else echo "FAILED (rc $1)"; fi; }
# resample_gpu.py exits 3 when every kernel was right but the speed check failed.
if [[ $BENCH_RC == 3 ]]; then BENCH="ok"; else BENCH=$(verdict "$BENCH_RC"); fi
echo "gpu_check: tests $(verdict "$TESTS_RC"), benchmark $BENCH, speed check ${SPEED:-missing}, processor $(verdict "$PROC_RC"); results in $OUT"
[[ $TESTS_RC == 0 && $BENCH_RC == 0 && $PROC_RC == 0 ]]
