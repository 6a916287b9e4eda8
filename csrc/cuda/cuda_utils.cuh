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

// Kernel launches and dynamic shared memory through these two macros, so that the same kernel source compiles
// with nvcc and, for scripts/test_cuda_emulation.sh, with a host compiler under csrc/emu/cuda_emu.h.
// PICNN_LAUNCH((kernel<T, N>), grid, block, shared, stream)(args...) is kernel<T, N><<<grid, block, shared, stream>>>(args...).
#define PICNN_UNPAREN(...) __VA_ARGS__
#if defined(PICNN_CUDA_EMULATION)
#define PICNN_LAUNCH(kernel, ...) ::picnn_emu::make_launcher(&PICNN_UNPAREN kernel, #kernel, __VA_ARGS__)
#define PICNN_DYNAMIC_SHARED(type, name) type* name = reinterpret_cast<type*>(::picnn_emu::ctx.dynamic_shared)
#else
#define PICNN_LAUNCH(kernel, ...) PICNN_UNPAREN kernel<<<__VA_ARGS__>>>
#define PICNN_DYNAMIC_SHARED(type, name) extern __shared__ __align__(16) type name[]
#endif
// A device function kept out of line (a cold failure path, so that its printf frame and the registers its call
// clobbers stay out of the hot kernel). GCC's headers spell the attribute __noinline__, so the emulation cannot
// define that name as a macro; it takes the host attribute instead.
#if defined(PICNN_CUDA_EMULATION)
#define PICNN_NOINLINE __attribute__((noinline))
#else
#define PICNN_NOINLINE __noinline__
#endif

namespace picnn {

template <typename scalar_t>
using opmath_t = at::opmath_type<scalar_t>;

constexpr int kThreads = 256;

// N values moved with one 16-byte (or smaller) load or store.
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// A tensor of any floating dtype (p, the mask, noise, grad_p), read and written one value at a time in
// double: these are (B, K) values touched once per (sample, channel), so a switch on the dtype (uniform across
// the warp) costs nothing next to the element loops, and the kernels need no conversion launches and no
// instantiation per pair of dtypes (under autocast, x is bfloat16 while p stays float32).
struct FloatArray {
  void* data = nullptr;
  at::ScalarType type = at::kFloat;

  FloatArray() = default;
  explicit FloatArray(const at::Tensor& t) {
    if (t.defined()) {
      data = t.data_ptr();
      type = t.scalar_type();
    }
  }

  __device__ __forceinline__ double load(int64_t i) const {
    switch (type) {
      case at::kDouble:
        return static_cast<const double*>(data)[i];
      case at::kHalf:
        return static_cast<float>(static_cast<const at::Half*>(data)[i]);
      case at::kBFloat16:
        return static_cast<float>(static_cast<const at::BFloat16*>(data)[i]);
      default:
        return static_cast<const float*>(data)[i];
    }
  }

  __device__ __forceinline__ void store(int64_t i, double value) const {
    switch (type) {
      case at::kDouble:
        static_cast<double*>(data)[i] = value;
        break;
      case at::kHalf:
        static_cast<at::Half*>(data)[i] = at::Half(static_cast<float>(value));
        break;
      case at::kBFloat16:
        static_cast<at::BFloat16*>(data)[i] = at::BFloat16(static_cast<float>(value));
        break;
      default:
        static_cast<float*>(data)[i] = static_cast<float>(value);
    }
  }
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
