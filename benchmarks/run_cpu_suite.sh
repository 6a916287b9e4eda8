#!/usr/bin/env bash
# The CPU benchmark suite in both allocator regimes: the gate (fused, eager and compiled composition, bare
# kernels, copy) and the PICNN head step (picnn_ext, authors, eager and compiled composition), then the tables;
# then both again with the implementations interleaved round by round (benchmarks/interleaved.py), whose
# ratios a drifting machine moves less.
#
#   bash benchmarks/run_cpu_suite.sh [OUTPUT_DIR]        # default: bench-out
#
# Regimes (glibc; the suite records them in each JSON, and report.py states them above each table):
#   keep:    MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296, so freed memory is kept and
#            reused: no page faults from fresh mappings; the ratios are those of the work done.
#   default: glibc's defaults, what a training process sees unless told otherwise: blocks above the
#            (dynamic) mmap threshold are mapped and unmapped per call, and their page faults vary run to run.
# Switches: PYTHON (default .venv/bin/python), PICNN_SUITE_BENCHES (default "gate picnn_step interleaved"),
# PICNN_SUITE_REGIMES (default "keep default"), PICNN_SUITE_TIMER:
#   wall (default): wall-clock time with torch's default threads (2 here), what a quiet machine shows;
#   cpu: one thread (OMP_NUM_THREADS=1) timed by process CPU time (--benchmark-timer=time.process_time), which
#        time slices given to other processes do not inflate: on a 2-core machine shared with other jobs, wall
#        medians of multi-threaded runs snap to multiples of the scheduler's time slice.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench-out}
PYTHON=${PYTHON:-.venv/bin/python}
BENCHES=${PICNN_SUITE_BENCHES:-gate picnn_step interleaved}
REGIMES=${PICNN_SUITE_REGIMES:-keep default}
mkdir -p "$OUT"
status=0
timer_args=()
if [ "${PICNN_SUITE_TIMER:-wall}" = cpu ]; then
  export OMP_NUM_THREADS=1
  timer_args=(--benchmark-timer=time.process_time)
fi

declare -A FILES=([gate]=benchmarks/bench_bernoulli_gate.py [picnn_step]=benchmarks/bench_picnn_step.py)
for regime in $REGIMES; do
  case $regime in
    keep) env_vars=(MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296) ;;
    default) env_vars=() ;;
    *) echo "unknown regime $regime (keep or default)"; exit 2 ;;
  esac
  for bench in $BENCHES; do
    json="$OUT/$bench-$regime.json"
    if [ "$bench" = interleaved ]; then  # both benchmarks again, implementations alternating (interleaved.py)
      echo "=== interleaved gate and PICNN step, allocator regime $regime ==="
      env -u MALLOC_MMAP_THRESHOLD_ -u MALLOC_TRIM_THRESHOLD_ "${env_vars[@]}" "$PYTHON" benchmarks/interleaved.py \
        --json "$OUT/interleaved-$regime.out.json" > "$OUT/interleaved-$regime.md" || { echo "FAILED: interleaved"; status=1; }
      cat "$OUT/interleaved-$regime.md"
      continue
    fi
    echo "=== $bench, allocator regime $regime ==="
    if ! env -u MALLOC_MMAP_THRESHOLD_ -u MALLOC_TRIM_THRESHOLD_ "${env_vars[@]}" \
        "$PYTHON" -m pytest "${FILES[$bench]}" -q -p no:cacheprovider "${timer_args[@]}" --benchmark-json="$json"; then
      echo "FAILED: $bench ($regime)"; status=1
    fi
  done
done
jsons=$(ls "$OUT"/*.json 2>/dev/null | grep -v "\.out\.json$")
if [ -n "$jsons" ]; then
  # shellcheck disable=SC2086
  "$PYTHON" benchmarks/report.py $jsons --out "$OUT/tables.md" || status=1
fi
exit $status
