#!/usr/bin/env bash
# Builds the libFuzzer targets in fuzz/ with clang, ASan and UBSan, and runs each on a copy of its seed
# corpus for FUZZ_SECONDS (default 10: the CI smoke run). A finding (crash, sanitizer report, an exception
# other than core::Error / a JSON parse error) fails the script and leaves the reproducer in build-fuzz/findings.
#   FUZZ_SECONDS=600 bash scripts/fuzz.sh     # a longer run (numbers for docs/RELIABILITY.md)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET="${FUZZ_SECONDS:-10}"
cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ \
      -DCMAKE_C_COMPILER=clang -DZEROLORA_SANITIZE=ON -DZEROLORA_BUILD_FUZZ=ON -DZEROLORA_BUILD_TESTS=OFF \
      -DZEROLORA_BUILD_BENCH=OFF > /dev/null
targets=$(cd fuzz && ls fuzz_*.cpp | sed 's/\.cpp$//')
ninja -C build-fuzz -j2 $targets
mkdir -p build-fuzz/findings
status=0
for t in $targets; do
  work="build-fuzz/corpus/$t"
  mkdir -p "$work"
  cp -n fuzz/corpus/"$t"/* "$work"/ 2>/dev/null || true
  echo "== $t (${SECONDS_PER_TARGET}s)"
  if ! ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
       ./build-fuzz/fuzz/"$t" -max_total_time="$SECONDS_PER_TARGET" -max_len=8192 -timeout=10 \
       -artifact_prefix=build-fuzz/findings/"$t"- -print_final_stats=1 "$work" > "build-fuzz/$t.log" 2>&1; then
    echo "FINDING in $t: see build-fuzz/$t.log and build-fuzz/findings/"; tail -30 "build-fuzz/$t.log"; status=1
  else
    grep -E "stat::number_of_executed_units|cov:" "build-fuzz/$t.log" | tail -2
  fi
done
exit $status
