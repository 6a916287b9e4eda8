// The CUDA execution model on the CPU (force-included with -include when csrc/cuda/*.cu are compiled by g++ or
// clang++ for scripts/test_cuda_emulation.sh; nvcc never sees it). Each thread of a block is a real pthread, so
// ThreadSanitizer sees every shared-memory access of one thread against another's and the barriers between them;
// blocks run one after the other on the same threads. Warp operations and __syncthreads are rendezvous that
// check every lane of the mask (every thread of the block) arrives at the same call site, and report an error
// naming the kernel otherwise (runtime.cpp), never a hang.
#pragma once

#include <assert.h>
#include <cassert>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <tuple>
#include <type_traits>

#define PICNN_CUDA_EMULATION 1

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
// Blocks run one at a time, so one static instance per kernel instantiation is the block's shared memory.
#define __shared__ static

struct uint3 {
  unsigned int x = 0, y = 0, z = 0;
};
struct dim3 {
  unsigned int x = 1, y = 1, z = 1;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};
typedef struct CUstream_st* cudaStream_t;
typedef int cudaError_t;
constexpr cudaError_t cudaSuccess = 0;
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
template <typename F>
inline cudaError_t cudaFuncSetAttribute(F, cudaFuncAttribute, int) {
  return cudaSuccess;
}

namespace picnn_emu {

struct ThreadCtx {
  uint3 thread_idx, block_idx;
  dim3 block_dim, grid_dim;
  unsigned char* dynamic_shared = nullptr;
};
extern thread_local ThreadCtx ctx;

// A warp rendezvous of the lanes of `mask` at call site (file, line); `mine` (n <= 16 bytes) is this lane's value,
// `read(slots, lane, user)` runs once every lane of the mask has arrived, before any lane leaves.
using SlotReader = void (*)(const unsigned char (*slots)[16], int lane, void* user);
void warp_rendezvous(unsigned mask, const char* op, const char* file, int line, const void* mine, size_t n,
                     SlotReader read, void* user);
void syncthreads(const char* file, int line);
[[noreturn]] void assert_fail(const char* assertion, const char* file, unsigned int line, const char* function);

template <typename T>
struct ShflRead {
  int mode;  // 0 idx, 1 xor, 2 up, 3 down
  int arg, width;
  T out;
  static void read(const unsigned char (*slots)[16], int lane, void* user) {
    auto* self = static_cast<ShflRead*>(user);
    const int w = self->width, seg = lane & ~(w - 1);
    int src = lane;
    switch (self->mode) {
      case 0: src = seg + (self->arg % w); break;
      case 1: src = lane ^ self->arg; if (src >= seg + w || src < seg) src = lane; break;
      case 2: src = lane - self->arg; if (src < seg) src = lane; break;
      default: src = lane + self->arg; if (src >= seg + w) src = lane; break;
    }
    std::memcpy(&self->out, slots[src], sizeof(T));
  }
};

template <typename T>
T shfl(int mode, const char* name, const char* file, int line, unsigned mask, T var, int arg, int width = 32, int = 0) {
  static_assert(sizeof(T) <= 16 && std::is_trivially_copyable_v<T>, "warp shuffle of a value above 16 bytes");
  ShflRead<T> r{mode, arg, width, var};
  warp_rendezvous(mask, name, file, line, &var, sizeof(T), &ShflRead<T>::read, &r);
  return r.out;
}

struct BallotRead {
  unsigned mask, out = 0;
  static void read(const unsigned char (*slots)[16], int, void* user) {
    auto* self = static_cast<BallotRead*>(user);
    for (int l = 0; l < 32; ++l) {
      int v;
      std::memcpy(&v, slots[l], sizeof v);
      if ((self->mask >> l & 1u) && v) self->out |= 1u << l;
    }
  }
};

inline unsigned ballot(const char* name, const char* file, int line, unsigned mask, int pred) {
  BallotRead r{mask};
  pred = pred != 0;
  warp_rendezvous(mask, name, file, line, &pred, sizeof pred, &BallotRead::read, &r);
  return r.out;
}

}  // namespace picnn_emu

#define threadIdx (::picnn_emu::ctx.thread_idx)
#define blockIdx (::picnn_emu::ctx.block_idx)
#define blockDim (::picnn_emu::ctx.block_dim)
#define gridDim (::picnn_emu::ctx.grid_dim)
#define __syncthreads() ::picnn_emu::syncthreads(__FILE__, __LINE__)
#define __shfl_sync(mask, var, ...) ::picnn_emu::shfl(0, "__shfl_sync", __FILE__, __LINE__, mask, var, __VA_ARGS__, 32)
#define __shfl_xor_sync(mask, var, ...) \
  ::picnn_emu::shfl(1, "__shfl_xor_sync", __FILE__, __LINE__, mask, var, __VA_ARGS__, 32)
#define __shfl_up_sync(mask, var, ...) ::picnn_emu::shfl(2, "__shfl_up_sync", __FILE__, __LINE__, mask, var, __VA_ARGS__, 32)
#define __shfl_down_sync(mask, var, ...) \
  ::picnn_emu::shfl(3, "__shfl_down_sync", __FILE__, __LINE__, mask, var, __VA_ARGS__, 32)
#define __ballot_sync(mask, pred) ::picnn_emu::ballot("__ballot_sync", __FILE__, __LINE__, mask, pred)
#define __any_sync(mask, pred) (::picnn_emu::ballot("__any_sync", __FILE__, __LINE__, mask, pred) != 0u)
#define __all_sync(mask, pred) (::picnn_emu::ballot("__all_sync", __FILE__, __LINE__, mask, pred) == (mask))
// A device-side assertion stops the launch; the launcher raises an error with its message (printf before it
// has reached stdout).
#define __assert_fail ::picnn_emu::assert_fail

using std::isfinite;
using std::isinf;
using std::isnan;
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }

template <typename T>
inline T max(T a, T b) {
  return a < b ? b : a;
}
template <typename T>
inline T min(T a, T b) {
  return b < a ? b : a;
}

namespace picnn_emu {

// Runs `body` for every thread of every block (blockDim up to 1024 threads); throws std::runtime_error naming
// `kernel` on a divergent warp operation or barrier, a deadlock, or a device-side assertion.
void launch(const char* kernel, dim3 grid, dim3 block, size_t shared_bytes, void (*body)(void*), void* user);

template <typename F>
struct Launcher {
  F* kernel;
  const char* name;
  dim3 grid, block;
  size_t shared;
  template <typename... Args>
  void operator()(Args&&... args) const {
    auto call = [&] { kernel(args...); };
    using Call = decltype(call);
    launch(name, grid, block, shared, [](void* c) { (*static_cast<Call*>(c))(); }, &call);
  }
};

template <typename F>
Launcher<F> make_launcher(F* kernel, const char* name, dim3 grid, dim3 block, size_t shared = 0, cudaStream_t = nullptr) {
  return Launcher<F>{kernel, name, grid, block, shared};
}

}  // namespace picnn_emu
