#!/usr/bin/env bash
# Builds the unit tests with clang, AddressSanitizer (+ LeakSanitizer) and UndefinedBehaviorSanitizer in
# build-asan/ and runs them with ctest. Any sanitizer report fails the test that caused it, and so the script.
#   bash scripts/sanitize.sh                 # CI (.ci/run)
#   SANITIZE_CTEST_ARGS="-R Safetensors" bash scripts/sanitize.sh   # a subset
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
# RelWithDebInfo at -O1 with line tables only: the fastest compile that still gives file:line in every report
# (-O1 keeps the build short on 2 cores; the tests run a little slower than at -O2, which is cheaper here).
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -gline-tables-only" -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -gline-tables-only" \
      -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_C_COMPILER=clang -DZEROLORA_SANITIZE=ON \
      -DZEROLORA_BUILD_TESTS=ON -DZEROLORA_BUILD_BENCH=OFF -DZEROLORA_BUILD_FUZZ=OFF > /dev/null
ninja -C build-asan -j2

# Every finding is fatal: ASan and UBSan stop the process at the first report (the build also passes
# -fno-sanitize-recover=undefined), LeakSanitizer runs at exit, and each prints the stack with file:line.
# Children inherit these: the zerolora binary the end-to-end tests start, and the ranks under mpirun.
# scripts/lsan.supp lists third-party leaks only (OpenMPI's start-up allocations); ours are never suppressed.
export ASAN_OPTIONS="halt_on_error=1:abort_on_error=0:detect_leaks=1:detect_stack_use_after_return=0:check_initialization_order=1:strict_init_order=1:print_stacktrace=1:exitcode=86"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:report_error_type=1"
export LSAN_OPTIONS="suppressions=$root/scripts/lsan.supp:print_suppressions=0"
ctest --test-dir build-asan --output-on-failure -j2 --timeout 1800 ${SANITIZE_CTEST_ARGS:-}
