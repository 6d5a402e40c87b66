#!/usr/bin/env bash
# Runs a command with groupsparse's native kernels built under AddressSanitizer and
# UndefinedBehaviorSanitizer (GROUPSPARSE_SANITIZE=1; a separate cached build). Python is not
# instrumented, so the sanitizers' runtimes are preloaded; any finding stops the process with
# a report on stderr.
#
#   tools/sanitize.sh python -m pytest tests/runtime -q
#   GROUPSPARSE_FUZZ_EXAMPLES=500 tools/sanitize.sh bash tools/fuzz.sh
set -euo pipefail
cd "$(dirname "$0")/.."
compiler=${CXX:-c++}
asan=$("$compiler" -print-file-name=libasan.so)
ubsan=$("$compiler" -print-file-name=libubsan.so)
[ -f "$asan" ] && [ -f "$ubsan" ] || { echo "no libasan/libubsan for $compiler" >&2; exit 2; }
# leaks: CPython and torch keep memory to the end by design; the kernels allocate none
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1:halt_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export GROUPSPARSE_SANITIZE=1
LD_PRELOAD="$asan:$ubsan${LD_PRELOAD:+:$LD_PRELOAD}" exec "$@"
