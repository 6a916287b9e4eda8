#!/usr/bin/env bash
# The CUDA kernels run on the CPU: csrc/cuda/*.cu (the files nvcc compiles) built by the host compiler under
# the emulation of csrc/emu/cuda_emu.h three times (plain, ThreadSanitizer, AddressSanitizer with
# UndefinedBehaviorSanitizer), each run over the cases of scripts/cuda_emulation_cases.py against the compiled
# CPU backend, and the planted-bug kernels of tests/emu/planted_bugs.cu, each of which its build must report.
# Needs no CUDA toolkit and no GPU. Prints `N passed, N failed`; exits non-zero on any failure.
# PYTHON: an interpreter with torch (CPU) and picnn_ext's compiled CPU backend importable (default .venv).
set -uo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
export MAX_JOBS=${MAX_JOBS:-2} EMU_EXTRA_SOURCES=tests/emu/planted_bugs.cu PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export TORCH_CPP_LOG_LEVEL=ERROR  # the emulated CUDA ops override the CPU build's CUDA stubs: no warning
passed=0; failed=0
tally() {  # tally LOG RC: add the counts of a run's closing line (a run that died before it counts as a failure)
  local line; line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$1" | tail -1)
  if [[ -n $line ]]; then
    passed=$((passed + $(cut -d' ' -f1 <<<"$line"))); failed=$((failed + $(cut -d' ' -f3 <<<"$line")))
  fi
  if [[ -z $line || $2 -ne 0 && $(cut -d' ' -f3 <<<"$line") == 0 ]]; then
    echo "the $3 run stopped (rc $2) before its closing line or with a sanitizer report:"; tail -30 "$1"
    failed=$((failed + 1))
  fi
}
# The sanitizer runtime first, then libstdc++ (python does not link it: the runtime's exception interceptors
# need it loaded); one OpenMP thread, since TSan cannot see libgomp's synchronisation in the CPU reference.
stdcxx=$(g++ -print-file-name=libstdc++.so)
for flavour in ${FLAVOURS:-plain tsan asan}; do
  echo "=== $flavour build"
  if ! lib=$(bash scripts/build_cuda_emulation.sh "$py" "$flavour" 2> >(grep -E 'error' >&2)); then
    echo "the $flavour build failed"; failed=$((failed + 1)); continue
  fi
  log=build/emu/$flavour/cases.log
  case $flavour in
    plain) env PICNN_EMU_TIMEOUT=20 "$py" scripts/cuda_emulation_cases.py "$lib" --planted plain >"$log" 2>&1 ;;
    tsan) env LD_PRELOAD="$(g++ -print-file-name=libtsan.so) $stdcxx" OMP_NUM_THREADS=1 TSAN_OPTIONS="halt_on_error=1 exitcode=66" \
            PICNN_EMU_TIMEOUT=60 "$py" scripts/cuda_emulation_cases.py "$lib" --planted tsan --quick >"$log" 2>&1 ;;
    asan) env LD_PRELOAD="$(g++ -print-file-name=libasan.so) $stdcxx" OMP_NUM_THREADS=1 ASAN_OPTIONS="detect_leaks=0 halt_on_error=1" \
            UBSAN_OPTIONS="print_stacktrace=1 halt_on_error=1" PICNN_EMU_TIMEOUT=60 \
            "$py" scripts/cuda_emulation_cases.py "$lib" --planted asan --quick >"$log" 2>&1 ;;
  esac
  rc=$?
  grep -E '^FAILED' "$log"
  tail -1 "$log"
  tally "$log" "$rc" "$flavour"
done
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
