// Small helpers shared by the CUDA kernels: vector packs, launch sizes, Philox state, value checks.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/detail/UnpackRaw.cuh>
#include <c10/cuda/CUDAException.h>

#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <optional>

namespace picnn {

template <typename scalar_t>
using opmath_t = at::opmath_type<scalar_t>;

constexpr int kThreads = 256;

// N values moved with one 16-byte (or smaller) load or store.
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// Elements per 16-byte access.
template <typename scalar_t>
constexpr int vec_width() {
  return 16 / sizeof(scalar_t);
}

inline bool aligned16(const void* ptr) {
  return reinterpret_cast<uintptr_t>(ptr) % 16 == 0;
}

// Enough blocks to fill the GPU several times over, for grid-stride loops.
inline int64_t grid_for(int64_t work_items, int threads = kThreads) {
  const int64_t needed = (work_items + threads - 1) / threads;
  const int64_t cap = static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 32;
  return std::max<int64_t>(1, std::min(needed, cap));
}

// The Philox state of one call, taken under the generator's lock and unpacked inside the kernel, so the
// op stays correct when captured in a CUDA graph.
inline at::PhiloxCudaState philox_state(const std::optional<at::Generator>& generator) {
  auto* gen = at::get_generator_or_default<at::CUDAGeneratorImpl>(generator, at::cuda::detail::getDefaultCUDAGenerator());
  std::lock_guard<std::mutex> lock(gen->mutex_);
  return gen->philox_cuda_state(4);  // each element uses one counter; the offset moves in steps of 4
}

// PICNN_EXT_CHECK_VALUES=1 turns the device-side value checks into host-side ones with a clear error
// (at the cost of a synchronisation per call).
inline bool host_value_checks() {
  static const bool enabled = [] {
    const char* value = std::getenv("PICNN_EXT_CHECK_VALUES");
    return value != nullptr && value[0] != '\0' && value[0] != '0';
  }();
  return enabled;
}

}  // namespace picnn
