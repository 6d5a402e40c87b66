#!/usr/bin/env bash
# One call on a lent GPU machine (no network): tests/cuda, then the benchmarks' GPU runs, each
# step under its own time limit, everything written under $OUT as it goes.
#
#   BENCH_COMMIT=<sha> BENCH_DIRTY=0 MODELS=bert-base,resnet50 TESTS_S=150 BENCH_S=300 \
#       bash tools/gpu_lease.sh
#
# The device machine's copy of the tree has no .git: pass the commit it holds as BENCH_COMMIT
# (and BENCH_DIRTY=1 when the tree has uncommitted changes), or the results say "unknown".
# LAYERS_S > 0 (formerly KERNELS_S) also runs `python -m benchmarks layers --device cuda` (the
# GPU layer set: dense and every compiler kernel, eager and from CUDA graphs) for that many
# seconds, before the end-to-end suite (LAYERS_ARGS, formerly KERNELS_ARGS: its further
# arguments). BENCH_S runs `python -m benchmarks gpu` (end to end and per layer of each model).
# Other settings: RUNS (calls per variant in the per-layer timings), MIN_RUN_TIME (seconds each
# end-to-end variant is timed for), VARIANTS and SPARSITIES (the gpu suite's --variants /
# --sparsities; empty for all), TESTS (what pytest runs), GROUP_SIZE (--group-size),
# BENCH_ARGS (the gpu suite's further arguments, e.g. --cudnn-benchmark), PYTEST_N
# (pytest-xdist workers for the tests, 8 by default; 0 for none).
#
# Results come back as $OUT/layers/*.json and $OUT/gpu/*.json (with their .md): copy them to
# benchmarks/results/<gpu>/<suite>/ in the checkout and run `python -m benchmarks index`.
# Then `python -m benchmarks vs_inductor benchmarks/results/<gpu>/gpu/<file>.json` writes issue
# 20's vs_inductor.json beside it (rows against Inductor, per-layer TFLOP/s, 2:4): commit both.
# Needs the wheels the machine lacks in .whl/ and `carry: [".whl"]` in the device call:
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl nvmath-python==1.0.0 cuda-pathfinder==1.9.1
set -u
OUT=${OUT:-/tmp/gpu_lease}
MODELS=${MODELS:-bert-base,vgg16,resnet50,vit-b16}
TESTS_S=${TESTS_S:-150}
BENCH_S=${BENCH_S:-300}
LAYERS_S=${LAYERS_S:-${KERNELS_S:-0}}
LAYERS_ARGS=${LAYERS_ARGS:-${KERNELS_ARGS:-}}
RUNS=${RUNS:-20}
MIN_RUN_TIME=${MIN_RUN_TIME:-1.0}
VARIANTS=${VARIANTS:-}
SPARSITIES=${SPARSITIES:-0.5,0.75,0.9}
# the Triton-interpreter test is a CPU check (CI runs it): deselected here, where it is slow
TESTS=${TESTS:-tests/cuda tests/runtime/test_triton_fused.py --deselect tests/runtime/test_triton_fused.py::test_kernels_in_triton_interpreter}
GROUP_SIZE=${GROUP_SIZE:-}
PYTEST_N=${PYTEST_N:-8}
export BENCH_COMMIT=${BENCH_COMMIT:-} BENCH_DIRTY=${BENCH_DIRTY:-}
[ -n "$BENCH_COMMIT" ] || unset BENCH_COMMIT
[ -n "$BENCH_DIRTY" ] || unset BENCH_DIRTY
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
if [ "$TESTS_S" -gt 0 ]; then
    # shellcheck disable=SC2086
    GROUPSPARSE_TRITON_AUTOTUNE=0 timeout "$TESTS_S" python3 -m pytest $TESTS \
        $([ "$PYTEST_N" -gt 0 ] && echo "-n $PYTEST_N") -q -p no:cacheprovider -rf --tb=short \
        >"$OUT/tests_cuda.log" 2>&1
    echo "tests/cuda rc=$? ($(tail -n 1 "$OUT/tests_cuda.log"))"
fi
if [ "$LAYERS_S" -gt 0 ]; then
    # shellcheck disable=SC2086
    timeout "$LAYERS_S" python3 -m benchmarks layers --device cuda --runs "$RUNS" \
        --out "$OUT/layers" $LAYERS_ARGS >"$OUT/layers.log" 2>&1
    echo "benchmarks layers rc=$?"
fi
if [ "$BENCH_S" -gt 0 ]; then
    # shellcheck disable=SC2086
    timeout "$BENCH_S" python3 -m benchmarks gpu --out "$OUT/gpu" --models "$MODELS" \
        --min-run-time "$MIN_RUN_TIME" --layer-runs "$RUNS" --warmup 3 --verbose \
        --sparsities "$SPARSITIES" ${VARIANTS:+--variants "$VARIANTS"} \
        ${GROUP_SIZE:+--group-size "$GROUP_SIZE"} ${BENCH_ARGS:-} >"$OUT/bench.log" 2>&1
    echo "benchmarks gpu rc=$?"
fi
grep -E "FAILED|ERROR|passed|failed" "$OUT/tests_cuda.log" 2>/dev/null | tail -n 25
grep -E "^  |Error|error" "$OUT/bench.log" 2>/dev/null | tail -n 40
tail -n 45 "$OUT/layers.log" 2>/dev/null
