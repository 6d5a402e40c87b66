#!/usr/bin/env bash
# One call on a lent GPU machine (no network): tests/cuda, then tools/bench_gpu.py model by
# model, each step under its own time limit, everything written under $OUT as it goes.
#
#   CARD=h200 MODELS=bert-base,resnet50 TESTS_S=150 BENCH_S=300 bash tools/gpu_lease.sh
#
# KERNELS_S > 0 also runs tools/gpu_kernels.py (per-kernel timings) for that many seconds,
# before the benchmark (KERNELS_ARGS: its further arguments). Other settings: RUNS (timed calls per measurement), VARIANTS and SPARSITIES (bench_gpu's
# --variants / --sparsities; empty for all), TESTS (what pytest runs), GROUP_SIZE (bench_gpu's
# --group-size), BENCH_ARGS (bench_gpu's further arguments, e.g. --cudnn-benchmark), PYTEST_N (pytest-xdist workers for the tests, 8 by default; 0 for none), RESULTS (the results folder, bench/results/$CARD by default), PLOTS=0 (no
# plots copied to $OUT, which brings back 8 files at most).
#
# Needs the wheels the machine lacks in .whl/ (tools/bench_gpu.py's docstring says how to
# download them) and `carry: [".whl"]` in the device call. A results.json already in
# bench/results/$CARD travels with the tree and is merged with, so models can be spread over
# calls.
set -u
OUT=${OUT:-/tmp/gpu_lease}
CARD=${CARD:-gpu}
MODELS=${MODELS:-bert-base,vgg16,resnet50,vit-b16}
TESTS_S=${TESTS_S:-150}
BENCH_S=${BENCH_S:-300}
KERNELS_S=${KERNELS_S:-0}
RUNS=${RUNS:-20}
VARIANTS=${VARIANTS:-}
SPARSITIES=${SPARSITIES:-0.5,0.75,0.9}
# the Triton-interpreter test is a CPU check (CI runs it): deselected here, where it is slow
TESTS=${TESTS:-tests/cuda tests/runtime/test_triton_fused.py --deselect tests/runtime/test_triton_fused.py::test_kernels_in_triton_interpreter}
GROUP_SIZE=${GROUP_SIZE:-}
PYTEST_N=${PYTEST_N:-8}
RESULTS=${RESULTS:-bench/results/$CARD}
PLOTS=${PLOTS:-1}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
# installed (no network, no dependencies) so that torch finds the torch.compile backend's
# entry point
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >/tmp/install.log 2>&1 \
    || { cp /tmp/install.log "$OUT/";
         echo "editable install failed (see install.log): torch.compile(backend='groupsparse') will not be found"; }
nvidia-smi -L
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
python3 -c "from groupsparse.runtime.cuda import cuda_available; print('cuda backend:', cuda_available())"
if [ "$TESTS_S" -gt 0 ]; then
    # shellcheck disable=SC2086
    GROUPSPARSE_TRITON_AUTOTUNE=0 timeout "$TESTS_S" python3 -m pytest $TESTS \
        $([ "$PYTEST_N" -gt 0 ] && echo "-n $PYTEST_N") -q -p no:cacheprovider -rf --tb=short \
        >"$OUT/tests_cuda.log" 2>&1
    echo "tests/cuda rc=$? ($(tail -n 1 "$OUT/tests_cuda.log"))"
fi
mkdir -p "$RESULTS"
if [ "$KERNELS_S" -gt 0 ]; then
    # shellcheck disable=SC2086
    timeout "$KERNELS_S" python3 tools/gpu_kernels.py --out "$OUT/kernels.json" ${KERNELS_ARGS:-} \
        >"$OUT/kernels.log" 2>&1
    echo "gpu_kernels rc=$?"
fi
if [ "$BENCH_S" -gt 0 ]; then
    timeout "$BENCH_S" python3 tools/bench_gpu.py --out "$RESULTS" --skip-tests \
        --models "$MODELS" --runs "$RUNS" --warmup 3 --verbose --sparsities "$SPARSITIES" \
        ${VARIANTS:+--variants "$VARIANTS"} ${GROUP_SIZE:+--group-size "$GROUP_SIZE"} \
        ${BENCH_ARGS:-} \
        >"$OUT/bench.log" 2>&1
    echo "bench_gpu rc=$?"
fi
cp "$RESULTS"/results.json "$OUT"/ 2>/dev/null
[ "$PLOTS" = 0 ] || cp "$RESULTS"/*.png "$OUT"/ 2>/dev/null
grep -E "FAILED|ERROR|passed|failed" "$OUT/tests_cuda.log" 2>/dev/null | tail -n 25
grep -E "^  |Error|error" "$OUT/bench.log" 2>/dev/null | tail -n 40
tail -n 45 "$OUT/kernels.log" 2>/dev/null
