// Small sm_90 kernels that each break one rule of benchmarks/sass_check.py (tests/test_sass_check.py), and one
// that keeps them all: the check must report each breach and pass the good kernel.
#include <cstdint>

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// Keeps every rule: a grid-stride loop of 16-byte packs.
template <typename T, int VEC>
__global__ void __launch_bounds__(256) good_copy_kernel(const Pack<T, VEC>* __restrict__ x, Pack<T, VEC>* __restrict__ y,
                                                        int64_t n) {
  for (int64_t i = blockIdx.x * 256 + threadIdx.x; i < n; i += int64_t(gridDim.x) * 256) {
    Pack<T, VEC> v = x[i];
#pragma unroll
    for (int j = 0; j < VEC; ++j) v.v[j] *= T(2);
    y[i] = v;
  }
}
template __global__ void good_copy_kernel<float, 4>(const Pack<float, 4>*, Pack<float, 4>*, int64_t);

// spill: a local array indexed at run time lives on the stack (LDL/STL, STACK 1024, LOCAL 0).
template <typename T, int VEC>
__global__ void __launch_bounds__(256) local_array_kernel(const T* __restrict__ x, T* __restrict__ y, int n, int k) {
  T a[256];
  for (int i = 0; i < 256; ++i) a[i] = x[(threadIdx.x + i * 7) % n];
  y[threadIdx.x] = a[k & 255];
}
template __global__ void local_array_kernel<float, 4>(const float*, float*, int, int);

// packs: an instantiation that claims 16-byte packs but loops over scalars.
template <typename T, int VEC>
__global__ void __launch_bounds__(256) scalar_loop_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t n) {
  for (int64_t i = blockIdx.x * 256 + threadIdx.x; i < n; i += int64_t(gridDim.x) * 256) y[i] = x[i] * T(2);
}
template __global__ void scalar_loop_kernel<float, 4>(const float*, float*, int64_t);

// div64: a 64-bit division and modulo per element.
template <typename T, int VEC>
__global__ void __launch_bounds__(256) div64_loop_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t n,
                                                         int64_t K) {
  for (int64_t i = blockIdx.x * 256 + threadIdx.x; i < n; i += int64_t(gridDim.x) * 256) {
    y[i] = x[i / K] + T(i % K);
  }
}
template __global__ void div64_loop_kernel<float, 1>(const float*, float*, int64_t, int64_t);

// shared: a static shared array of 4 KiB where the budget allows none.
template <typename T, int VEC>
__global__ void __launch_bounds__(256) shared_kernel(const T* __restrict__ x, T* __restrict__ y) {
  __shared__ T tile[1024];
  for (int i = threadIdx.x; i < 1024; i += 256) tile[i] = x[blockIdx.x * 1024 + i];
  __syncthreads();
  y[blockIdx.x * 256 + threadIdx.x] = tile[1023 - threadIdx.x];
}
template __global__ void shared_kernel<float, 1>(const float*, float*);
