#!/usr/bin/env bash
# Builds build/emu/<flavour>/libpicnn_cuda_emu.so: the CUDA kernel sources csrc/cuda/*.cu themselves, compiled
# by the host compiler under csrc/emu/cuda_emu.h, with csrc/emu's runtime and redispatching ops.
# Usage: build_cuda_emulation.sh PYTHON FLAVOUR (plain | tsan | asan)
set -euo pipefail
cd "$(dirname "$0")/.."
py=$1; flavour=$2
cxx=${CXX:-g++}
out=build/emu/$flavour
mkdir -p "$out"
read -r torch_dir abi < <("$py" -c 'import os, torch; print(os.path.dirname(torch.__file__), int(torch._C._GLIBCXX_USE_CXX11_ABI))')
flags=(-std=c++20 -fPIC -O1 -g -w -DPICNN_CUDA_EMULATION=1 -D_GLIBCXX_USE_CXX11_ABI=$abi
       -I csrc/emu/shim -isystem "$torch_dir/include" -isystem "$torch_dir/include/torch/csrc/api/include"
       -include csrc/emu/cuda_emu.h)
case $flavour in
  plain) ;;
  tsan) flags+=(-fsanitize=thread) ;;
  # vptr: the emulated CUDA generator is the CPU generator seen through a derived type (shim CUDAGeneratorImpl.h)
  asan) flags+=(-fsanitize=address,undefined -fno-sanitize=vptr -fno-sanitize-recover=all -fno-omit-frame-pointer) ;;
  *) echo "unknown flavour $flavour" >&2; exit 2 ;;
esac
sources=(csrc/cuda/bernoulli_gate_cuda.cu csrc/cuda/gate_rows_cuda.cu csrc/cuda/gate_columns_cuda.cu
         csrc/cuda/sample_class_cuda.cu csrc/emu/runtime.cpp csrc/emu/ops.cpp ${EMU_EXTRA_SOURCES:-})
objects=()
pids=()
for src in "${sources[@]}"; do
  obj="$out/$(basename "$src").o"
  objects+=("$obj")
  if [[ ! -f $obj || $src -nt $obj || csrc/emu/cuda_emu.h -nt $obj || csrc/cuda/cuda_utils.cuh -nt $obj ]]; then
    "$cxx" "${flags[@]}" -x c++ -c "$src" -o "$obj" &
    pids+=($!)
    while (( $(jobs -rp | wc -l) >= ${MAX_JOBS:-2} )); do wait -n; done
  fi
done
for pid in "${pids[@]}"; do wait "$pid"; done
"$cxx" "${flags[@]}" -shared "${objects[@]}" -L "$torch_dir/lib" -lc10 -ltorch_cpu -Wl,-rpath,"$torch_dir/lib" \
  -o "$out/libpicnn_cuda_emu.so"
echo "$out/libpicnn_cuda_emu.so"
