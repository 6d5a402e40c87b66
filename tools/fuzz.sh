#!/usr/bin/env bash
# The long fuzzed-equivalence run of tests/reliability/test_fuzz.py: 2,000 random pruned
# models (or GROUPSPARSE_FUZZ_EXAMPLES=N), compiled with decide="always" and compared with the
# masked eager model. Prints hypothesis' statistics (the count of passing examples).
set -euo pipefail
cd "$(dirname "$0")/.."
GROUPSPARSE_FUZZ=long exec nice -n 10 python -m pytest tests/reliability/test_fuzz.py -m slow \
    -p no:cacheprovider --hypothesis-show-statistics -q "$@"
