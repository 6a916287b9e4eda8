#!/usr/bin/env bash
# The GPU measurements in one command, for a fresh machine that has torch (a CUDA build), nvcc, ninja, pytest
# and pytest-benchmark but no network: build picnn_ext in place for the visible GPU, record the machine, run
# the CUDA tests and a CPU smoke test, the benchmarks (bernoulli_gate timed by CUDA events, interleaved with
# its competitors; the PICNN head's training step; MIS) and write markdown tables of the results. Steps run in
# the order issue 7 spends a lease: build, tests, gate, head step, MIS. Without a GPU: a CPU smoke run only.
#
#   bash benchmarks/run_gpu_suite.sh [OUTPUT_DIR]            # OUTPUT_DIR defaults to $OUT
#
# Environment:
#   PYTHON=python3                  the interpreter that holds torch
#   PICNN_SUITE_SKIP_BUILD=1        use the picnn_ext that is already built and importable
#   PICNN_SUITE_STEPS="build tests gate picnn_step mis resnet"   the steps to run (this order; "environment" and
#                                   the check of what was compiled always run)
#   PICNN_SUITE_TESTS="tests -k cuda"   what the test step runs (every CUDA-parametrised or CUDA-only test)
#   PICNN_SUITE_GATE_ROUNDS=20      interleaved rounds of each gate case (5 calls between two CUDA events each)
#   MAX_JOBS                        parallel compile jobs (default: the CPU count)
#   TORCH_CUDA_ARCH_LIST            default: the visible GPU's compute capability (9.0 on an H100/H200)
#
# On a device lease (15 minutes in all, 10 per call) the whole suite does not fit one call: run it as two,
#   PICNN_SUITE_STEPS="build tests gate" bash benchmarks/run_gpu_suite.sh           (about 5 minutes)
#   PICNN_SUITE_SKIP_BUILD=1 PICNN_SUITE_STEPS="picnn_step mis resnet" bash benchmarks/run_gpu_suite.sh
# (the second on the still-warm machine, which keeps the in-place build), each call's files fetched in between.
#
# Stops at the first failing step; the tables of what was measured until then are written all the same.
# At most 8 files, so that all of them come back from a device machine's $OUT:
#   environment.txt   nvidia-smi (device, driver), nvcc, torch, CPU, git revision, python -m picnn_ext.info
#   suite.log         everything the steps printed
#   gate.json         the gate cases (benchmarks/interleaved.py --device cuda): medians
#   picnn_step.json mis.json   pytest-benchmark results
#   tables.md         benchmarks/report.py's tables of those, the gate's table and the ResNet-50 step's
#                     (benchmarks/resnet_step.py: STD against PICNN)
#   status.txt        each step's outcome and duration
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:-${OUT:-}}
if [ -z "$out" ]; then
  echo "usage: bash benchmarks/run_gpu_suite.sh OUTPUT_DIR   (or set OUT)" >&2
  exit 2
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)
PYTHON=${PYTHON:-python3}
STEPS=${PICNN_SUITE_STEPS:-build tests gate picnn_step mis resnet}
if [ "${PICNN_SUITE_SKIP_BUILD:-0}" = 1 ]; then
  STEPS=${STEPS//build/}
fi
log=$out/suite.log
status=$out/status.txt
: >"$log"
: >"$status"
# results of an earlier run in the same folder must not pass for this run's
rm -f "$out/gate.json" "$out/gate.md" "$out/resnet.md" "$out/picnn_step.json" "$out/mis.json" "$out/tables.md" "$out/environment.txt"
# Python holds its output back when piped into tee; the log should show a hanging step where it hangs.
export PYTHONUNBUFFERED=1
suite_start=$(date +%s)
current=setup

finish() {
  local rc=$?
  set +e
  if [ "$rc" -ne 0 ]; then
    echo "FAILED: $current (exit $rc)" | tee -a "$status"
  fi
  local results=()
  for name in picnn_step mis; do
    [ -s "$out/$name.json" ] && results+=("$out/$name.json")
  done
  : >"$out/tables.md"
  if [ ${#results[@]} -gt 0 ]; then
    # report.py prints the tables; they end the console output, where a device call's output tail shows them
    "$PYTHON" benchmarks/report.py "${results[@]}" --out "$out/tables.md" 2>&1 | tee -a "$log"
  fi
  # the tables of the scripts that are not pytest-benchmark runs, merged in (the files a call brings back are few)
  for name in gate resnet; do
    if [ -s "$out/$name.md" ]; then
      { echo; cat "$out/$name.md"; } >>"$out/tables.md"
      tee -a "$log" <"$out/$name.md"
    fi
    rm -f "$out/$name.md"
  done
  echo "suite: $(($(date +%s) - suite_start)) s in all; results in $out" | tee -a "$status"
  exit "$rc"
}
trap finish EXIT

# step NAME COMMAND...: run one step, its output to the console and the log, its outcome to status.txt
step() {
  local name=$1 start
  shift
  current=$name
  start=$(date +%s)
  echo | tee -a "$log"
  echo "=== $name ($((start - suite_start)) s into the suite) ===" | tee -a "$log"
  "$@" 2>&1 | tee -a "$log"
  echo "passed: $name ($(($(date +%s) - start)) s)" | tee -a "$status"
}

wanted() {
  [[ " $STEPS " == *" $1 "* ]]
}

environment() {
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "git: $(git rev-parse HEAD 2>/dev/null || echo 'not a git checkout')" \
       "$(git status --porcelain 2>/dev/null | grep -q . && echo '(with uncommitted changes)')"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores"
  echo "python: $("$PYTHON" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
  "$PYTHON" -c 'import torch; print("torch:", torch.__version__, "cuda", torch.version.cuda,
                                   "gpu available:", torch.cuda.is_available())'
  if command -v nvidia-smi >/dev/null; then
    # a record, not a requirement: a query field this driver lacks must not stop the suite
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.memory --format=csv || true
    nvidia-smi || true
  else
    echo "nvidia-smi: not found"
  fi
  if command -v nvcc >/dev/null; then nvcc --version; else echo "nvcc: not found"; fi
}

record_environment() {
  environment 2>&1 | tee "$out/environment.txt"
}

build() {
  if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
    export PATH=/usr/local/cuda/bin:$PATH
  fi
  if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
    # the visible GPU's own architecture only: one nvcc pass per file, and native code for it (sm_90, Hopper)
    TORCH_CUDA_ARCH_LIST=$("$PYTHON" -c 'import torch
if torch.cuda.is_available(): print("%d.%d" % torch.cuda.get_device_capability())')
    [ -n "$TORCH_CUDA_ARCH_LIST" ] && export TORCH_CUDA_ARCH_LIST || unset TORCH_CUDA_ARCH_LIST
  fi
  export MAX_JOBS=${MAX_JOBS:-$(nproc)}
  # Where torch came with pip's CUDA packages, some CUDA headers live only there (as in .ci/run).
  local cuda_headers
  cuda_headers=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nvidia/cu13/include
  if [ -d "$cuda_headers" ]; then
    export CPATH=${CPATH:+$CPATH:}$cuda_headers
  fi
  echo "TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-unset} MAX_JOBS=$MAX_JOBS"
  # --no-index: nothing can be fetched on the GPU machine, and nothing needs to be (--no-deps, no isolation)
  if ! "$PYTHON" -m pip install --no-build-isolation --no-deps --no-index -e .; then
    echo "pip could not install the checkout; building the extension in place instead"
    "$PYTHON" setup.py build_ext --inplace
  fi
}

# After a build (or without one): the compiled parts must serve every device there is, else the benchmarks
# would time the pure-PyTorch fallback under the compiled op's name.
check_compiled() {
  "$PYTHON" -m picnn_ext.info | tee -a "$out/environment.txt"
  "$PYTHON" - <<'PY'
import torch
import picnn_ext.info

info = picnn_ext.info.report()
assert info["cpu_compiled"], f"compiled CPU kernels missing: {info['cpu_missing_reason']}"
if torch.cuda.is_available():
    assert info["cuda_compiled"], f"compiled CUDA kernels missing: {info['cuda_missing_reason']}"
PY
}

# The checkout itself comes first on the path, whether pip installed it or it was built in place.
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
bench_options=(-q -p no:cacheprovider --benchmark-columns=min,median,iqr,rounds)

step environment record_environment
if wanted build; then step build build; fi
step compiled check_compiled
if wanted tests; then
  # shellcheck disable=SC2086  # the setting is a pytest command line
  step tests "$PYTHON" -m pytest -q -p no:cacheprovider ${PICNN_SUITE_TESTS:-tests -k cuda}
  step cpu_smoke "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_bernoulli_gate.py -k "native-cpu and float32"
fi
if wanted gate; then
  if "$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    step gate "$PYTHON" benchmarks/interleaved.py --device cuda --only gate --rounds "${PICNN_SUITE_GATE_ROUNDS:-20}" \
      --json "$out/gate.json" --markdown "$out/gate.md"
  else
    echo "gate: no GPU, skipped (the CPU cases: benchmarks/run_cpu_suite.sh)" | tee -a "$status"
  fi
fi
if wanted picnn_step; then
  # the GPU cases where there is a GPU (the CPU ones are run_cpu_suite.sh's)
  picnn_step_selection=()
  if "$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then picnn_step_selection=(-k cuda); fi
  step picnn_step "$PYTHON" -m pytest benchmarks/bench_picnn_step.py "${bench_options[@]}" \
    "${picnn_step_selection[@]}" --benchmark-json="$out/picnn_step.json"
fi
if wanted mis; then
  step mis "$PYTHON" -m pytest benchmarks/bench_mutual_information.py "${bench_options[@]}" \
    --benchmark-json="$out/mis.json"
fi
if wanted resnet; then
  if "$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    step resnet "$PYTHON" benchmarks/resnet_step.py --markdown "$out/resnet.md"
  else
    echo "resnet: no GPU, skipped" | tee -a "$status"
  fi
fi
current=done
