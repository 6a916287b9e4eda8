// CUDA kernels of sample_class: a draw of one class per row from softmax(logits) by inverse CDF (the first
// class whose running weight exceeds u * total), one warp per row for up to kBlockRowClasses classes and one
// block per row above (a warp's serial walk over 32-class tiles is slow at tens of thousands of classes), and
// the softmax backward of the straight-through one-hot.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>

#include "../common/checks.h"
#include "../common/philox.h"
#include "cuda_utils.cuh"

namespace picnn {
namespace {

constexpr unsigned kFullMask = 0xffffffffu;

template <typename T>
__device__ T warp_sum(T value) {
#pragma unroll
  for (int width = 16; width > 0; width /= 2) value += __shfl_xor_sync(kFullMask, value, width);
  return value;
}

template <typename T>
__device__ T warp_max(T value) {
#pragma unroll
  for (int width = 16; width > 0; width /= 2) value = max(value, __shfl_xor_sync(kFullMask, value, width));
  return value;
}

// A device-side assertion whose message names logits (the host sees "device-side assert triggered"). Out of
// line, so that its printf frame and the registers the call clobbers stay out of the kernels that check.
PICNN_NOINLINE __device__ void bad_logits(int64_t b) {
  printf("picnn_ext sample_class: logits row %lld has a NaN or no finite maximum\n", static_cast<long long>(b));
  __assert_fail("sample_class: logits must not be NaN and each row needs a finite maximum", __FILE__, __LINE__,
                __func__);
}

// Row maximum; a NaN or a row without a finite maximum stops the kernel (bad_logits).
template <typename scalar_t>
__device__ opmath_t<scalar_t> row_max(const scalar_t* row, int64_t C, int64_t b, int lane) {
  using acc_t = opmath_t<scalar_t>;
  acc_t m = -INFINITY;
  bool has_nan = false;
  for (int64_t j = lane; j < C; j += 32) {
    const acc_t l = static_cast<acc_t>(row[j]);
    has_nan |= isnan(l);
    m = max(m, l);
  }
  m = warp_max(m);
  if (__any_sync(kFullMask, has_nan) || !isfinite(m)) bad_logits(b);
  return m;
}

template <typename scalar_t>
__global__ void sample_class_kernel(const scalar_t* __restrict__ logits, const opmath_t<scalar_t>* __restrict__ noise,
                                    scalar_t* __restrict__ onehot, int64_t* __restrict__ index, int64_t B, int64_t C,
                                    at::PhiloxCudaState philox) {
  using acc_t = opmath_t<scalar_t>;
  const auto [seed, offset] = at::cuda::philox::unpack(philox);
  const int lane = threadIdx.x % 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * blockDim.x / 32;
  for (int64_t b = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32; b < B; b += warps) {
    const scalar_t* row = logits + b * C;
    const acc_t max_logit = row_max(row, C, b, lane);
    acc_t total = 0;
    for (int64_t j = lane; j < C; j += 32) total += exp(static_cast<acc_t>(row[j]) - max_logit);
    total = warp_sum(total);
    const acc_t u = noise != nullptr ? noise[b] : static_cast<acc_t>(philox_uniform(seed, offset, b));
    const acc_t target = u * total;
    // Walk the row 32 classes at a time, keeping the running sum of the classes before the tile.
    acc_t running = 0;
    int64_t chosen = -1, last_positive = 0;
    for (int64_t tile = 0; tile < C && chosen < 0; tile += 32) {
      const int64_t j = tile + lane;
      const acc_t e = j < C ? exp(static_cast<acc_t>(row[j]) - max_logit) : acc_t(0);
      acc_t inclusive = e;
#pragma unroll
      for (int width = 1; width < 32; width *= 2) {
        const acc_t from_left = __shfl_up_sync(kFullMask, inclusive, width);
        if (lane >= width) inclusive += from_left;
      }
      const unsigned positive = __ballot_sync(kFullMask, e > 0);
      const unsigned exceeds = __ballot_sync(kFullMask, e > 0 && running + inclusive > target);
      if (exceeds != 0) chosen = tile + __ffs(exceeds) - 1;
      if (positive != 0) last_positive = tile + 31 - __clz(positive);
      running += __shfl_sync(kFullMask, inclusive, 31);
    }
    if (chosen < 0) chosen = last_positive;  // rounding left u * total at the total
    if (lane == 0) {
      index[b] = chosen;
      onehot[b * C + chosen] = scalar_t(1);
    }
  }
}

constexpr int64_t kBlockRowClasses = 1024;

// Block-wide reductions and scan of one value per thread (blockDim.x = kThreads), in a fixed order.
template <typename T, typename Op>
__device__ T block_reduce(T value, Op op, T* shared) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int width = 16; width > 0; width /= 2) value = op(value, __shfl_xor_sync(kFullMask, value, width));
  __syncthreads();  // `shared` may still be read from the previous call
  if (lane == 0) shared[warp] = value;
  __syncthreads();
  T total = shared[0];
  for (int w = 1; w < kThreads / 32; ++w) total = op(total, shared[w]);
  return total;
}

// The sum of `value` over the threads before this one.
template <typename T>
__device__ T block_exclusive_scan(T value, T* shared) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  T inclusive = value;
#pragma unroll
  for (int width = 1; width < 32; width *= 2) {
    const T from_left = __shfl_up_sync(kFullMask, inclusive, width);
    if (lane >= width) inclusive += from_left;
  }
  __syncthreads();
  if (lane == 31) shared[warp] = inclusive;
  __syncthreads();
  T before = 0;
  for (int w = 0; w < warp; ++w) before += shared[w];
  // the lane before's inclusive sum: exact, where inclusive - value would round
  const T exclusive = __shfl_up_sync(kFullMask, inclusive, 1);
  return lane == 0 ? before : before + exclusive;
}

// One block per row: thread t owns the contiguous classes [t * chunk, (t + 1) * chunk), so a scan of the
// threads' sums gives each thread the running weight before its classes, and the thread that crosses
// u * total walks its own classes; the smallest crossing class wins.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    sample_class_block_kernel(const scalar_t* __restrict__ logits, const opmath_t<scalar_t>* __restrict__ noise,
                              scalar_t* __restrict__ onehot, int64_t* __restrict__ index, int64_t B, int64_t C,
                              at::PhiloxCudaState philox) {
  using acc_t = opmath_t<scalar_t>;
  __shared__ acc_t shared[kThreads / 32];
  __shared__ int64_t shared_index[kThreads / 32];
  const auto [seed, offset] = at::cuda::philox::unpack(philox);
  const int64_t chunk = (C + kThreads - 1) / kThreads;
  const int64_t j_begin = threadIdx.x * chunk, j_end = min(C, j_begin + chunk);
  for (int64_t b = blockIdx.x; b < B; b += gridDim.x) {
    const scalar_t* row = logits + b * C;
    acc_t m = -INFINITY;
    bool has_nan = false;
    for (int64_t j = j_begin; j < j_end; ++j) {
      const acc_t l = static_cast<acc_t>(row[j]);
      has_nan |= isnan(l);
      m = max(m, l);
    }
    const acc_t max_logit = block_reduce(m, [](acc_t a, acc_t c) { return max(a, c); }, shared);
    const int any_nan = block_reduce(static_cast<int>(has_nan), [](int a, int c) { return a | c; },
                                     reinterpret_cast<int*>(shared_index));
    if (any_nan || !isfinite(max_logit)) bad_logits(b);
    acc_t mine = 0;
    int64_t last_positive = -1;
    for (int64_t j = j_begin; j < j_end; ++j) {
      const acc_t e = exp(static_cast<acc_t>(row[j]) - max_logit);
      mine += e;
      if (e > 0) last_positive = j;
    }
    const acc_t before = block_exclusive_scan(mine, shared);
    const acc_t total = block_reduce(mine, [](acc_t a, acc_t c) { return a + c; }, shared);
    const acc_t u = noise != nullptr ? noise[b] : static_cast<acc_t>(philox_uniform(seed, offset, b));
    const acc_t target = u * total;
    int64_t chosen = C;  // none yet
    acc_t running = before;
    for (int64_t j = j_begin; j < j_end; ++j) {
      const acc_t e = exp(static_cast<acc_t>(row[j]) - max_logit);
      running += e;
      if (e > 0 && running > target) {
        chosen = j;
        break;
      }
    }
    chosen = block_reduce(chosen, [](int64_t a, int64_t c) { return min(a, c); }, shared_index);
    // rounding left u * total at the total: the last class of positive weight
    if (chosen == C) chosen = block_reduce(last_positive, [](int64_t a, int64_t c) { return max(a, c); }, shared_index);
    if (threadIdx.x == 0) {
      index[b] = chosen;
      onehot[b * C + chosen] = scalar_t(1);
    }
  }
}

template <typename scalar_t>
__global__ void sample_class_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ logits,
                                             scalar_t* __restrict__ out, int64_t B, int64_t C) {
  using acc_t = opmath_t<scalar_t>;
  const int lane = threadIdx.x % 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * blockDim.x / 32;
  for (int64_t b = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32; b < B; b += warps) {
    const scalar_t* row = logits + b * C;
    const scalar_t* g = grad + b * C;
    acc_t max_logit = -INFINITY;
    for (int64_t j = lane; j < C; j += 32) max_logit = max(max_logit, static_cast<acc_t>(row[j]));
    max_logit = warp_max(max_logit);
    acc_t total = 0, weighted = 0;
    for (int64_t j = lane; j < C; j += 32) {
      const acc_t e = exp(static_cast<acc_t>(row[j]) - max_logit);
      total += e;
      weighted += e * static_cast<acc_t>(g[j]);
    }
    total = warp_sum(total);
    const acc_t mean_grad = warp_sum(weighted) / total;  // sum_j pi_j g_j
    for (int64_t j = lane; j < C; j += 32) {
      const acc_t pi = exp(static_cast<acc_t>(row[j]) - max_logit) / total;
      out[b * C + j] = static_cast<scalar_t>(pi * (static_cast<acc_t>(g[j]) - mean_grad));
    }
  }
}

std::tuple<at::Tensor, at::Tensor> sample_class_cuda(const at::Tensor& logits, const std::optional<at::Tensor>& noise,
                                                     std::optional<at::Generator> generator) {
  check_sample_class_args(logits, noise);
  const c10::cuda::CUDAGuard guard(logits.device());
  const at::Tensor l = logits.contiguous();
  const int64_t B = l.size(0), C = l.size(1);
  at::Tensor onehot = at::zeros_like(l);
  at::Tensor index = at::empty({B}, l.options().dtype(at::kLong));
  if (B == 0) return {onehot, index};
  if (host_value_checks()) {
    TORCH_CHECK_VALUE(!(l.isnan().any().item<bool>() || !l.amax(1).isfinite().all().item<bool>()),
                      "sample_class: logits must not be NaN and each row needs a finite maximum");
  }
  at::PhiloxCudaState philox;
  if (!noise.has_value()) philox = philox_state(generator);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, l.scalar_type(), "sample_class_cuda", [&] {
    using acc_t = opmath_t<scalar_t>;
    at::Tensor u;
    if (noise.has_value()) u = noise->contiguous().to(c10::CppTypeToScalarType<acc_t>::value);
    const auto stream = at::cuda::getCurrentCUDAStream();
    const acc_t* uniforms = u.defined() ? u.data_ptr<acc_t>() : nullptr;
    if (C > kBlockRowClasses) {
      const int64_t blocks = std::min<int64_t>(B, at::cuda::getCurrentDeviceProperties()->multiProcessorCount * 8);
      PICNN_LAUNCH((sample_class_block_kernel<scalar_t>), blocks, kThreads, 0, stream)(
          l.data_ptr<scalar_t>(), uniforms, onehot.data_ptr<scalar_t>(), index.data_ptr<int64_t>(), B, C, philox);
    } else {
      PICNN_LAUNCH((sample_class_kernel<scalar_t>), grid_for(B * 32), kThreads, 0, stream)(
          l.data_ptr<scalar_t>(), uniforms, onehot.data_ptr<scalar_t>(), index.data_ptr<int64_t>(), B, C, philox);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {onehot, index};
}

at::Tensor sample_class_backward_cuda(const at::Tensor& grad_onehot, const at::Tensor& logits) {
  check_sample_class_backward_args(grad_onehot, logits);
  const c10::cuda::CUDAGuard guard(logits.device());
  const at::Tensor l = logits.contiguous();
  const at::Tensor g = grad_onehot.contiguous();
  at::Tensor out = at::empty_like(l);
  if (l.numel() == 0) return out;
  const int64_t B = l.size(0), C = l.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, l.scalar_type(), "sample_class_backward_cuda", [&] {
    PICNN_LAUNCH((sample_class_backward_kernel<scalar_t>), grid_for(B * 32), kThreads, 0, at::cuda::getCurrentCUDAStream())(
        g.data_ptr<scalar_t>(), l.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), B, C);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(picnn, CUDA, m) {
  m.impl("sample_class", &sample_class_cuda);
  m.impl("sample_class_backward", &sample_class_backward_cuda);
}

}  // namespace picnn
