// CUDA kernels of sample_class: one warp per row draws a class from softmax(logits) by inverse CDF
// (a warp prefix sum finds the first class whose running weight exceeds u * total), and the softmax
// backward of the straight-through one-hot.
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

// Row maximum; a NaN or a row without a finite maximum stops the kernel with a message.
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
  if (__any_sync(kFullMask, has_nan) || !isfinite(m)) {
    if (lane == 0) {
      printf("picnn_ext sample_class: logits row %lld has a NaN or no finite maximum\n", static_cast<long long>(b));
    }
    __trap();
  }
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
    sample_class_kernel<scalar_t><<<grid_for(B * 32), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        l.data_ptr<scalar_t>(), u.defined() ? u.data_ptr<acc_t>() : nullptr, onehot.data_ptr<scalar_t>(),
        index.data_ptr<int64_t>(), B, C, philox);
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
    sample_class_backward_kernel<scalar_t><<<grid_for(B * 32), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
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
