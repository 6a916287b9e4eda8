// The CUDA ops of bernoulli_gate: argument checks, the mask alone and philox_uniform here; the kernels of the
// forward (which draws the mask) and of the backward per memory order in gate_rows_cuda.cu and
// gate_columns_cuda.cu (gate_kernels.cuh says what they share).
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../common/checks.h"
#include "../common/philox.h"
#include "gate_kernels.cuh"

namespace picnn {
namespace {

// The mask alone, for a gate with no elements (S = 0) and for channels-last K above 16K:
// one thread per Philox block of four (sample, channel) indices.
__global__ void gate_mask_kernel(FloatArray p, FloatArray noise, FloatArray mask, int64_t n, bool hard,
                                 at::PhiloxCudaState philox) {
  const auto [seed, offset] = at::cuda::philox::unpack(philox);
  const bool draw = hard && noise.data == nullptr;
  for (int64_t block = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; block < (n + 3) / 4;
       block += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    PhiloxBlock words{};
    if (draw) words = philox_block(seed, offset, block);
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      const int64_t i = 4 * block + w;
      if (i < n) mask.store(i, gate_mask(p.load(i), word_to_uniform(words.v[w]), noise, hard, i, true));
    }
  }
}

__global__ void philox_uniform_kernel(float* __restrict__ out, int64_t n, uint64_t seed, uint64_t offset) {
  for (int64_t block = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; block < (n + 3) / 4;
       block += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const PhiloxBlock words = philox_block(seed, offset, block);
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      if (4 * block + w < n) out[4 * block + w] = word_to_uniform(words.v[w]);
    }
  }
}

void check_probabilities_on_host(const at::Tensor& p) {
  const at::Tensor bad = (p < 0) | (p > 1) | p.isnan();
  TORCH_CHECK_VALUE(!bad.any().item<bool>(), "bernoulli_gate: p must hold probabilities in [0, 1] (no NaN)");
}

}  // namespace

void launch_gate_mask(const GateDraw& draw, int64_t n, cudaStream_t stream) {
  PICNN_LAUNCH((gate_mask_kernel), grid_for((n + 3) / 4), kThreads, 0, stream)(draw.p, draw.noise, draw.mask, n, draw.hard,
                                                                    draw.philox);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

namespace {

at::Tensor philox_uniform_cuda(const at::Tensor& like, int64_t seed, int64_t offset) {
  TORCH_CHECK_VALUE(like.dim() == 2, "philox_uniform: like must have shape (B, K), got ", like.sizes());
  const c10::cuda::CUDAGuard guard(like.device());
  at::Tensor u = at::empty(like.sizes(), like.options().dtype(at::kFloat));
  if (u.numel() == 0) return u;
  PICNN_LAUNCH((philox_uniform_kernel), grid_for((u.numel() + 3) / 4), kThreads, 0, at::cuda::getCurrentCUDAStream())(
      u.data_ptr<float>(), u.numel(), static_cast<uint64_t>(seed), static_cast<uint64_t>(offset));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return u;
}

std::tuple<at::Tensor, at::Tensor> bernoulli_gate_cuda(const at::Tensor& x, const at::Tensor& p, bool hard,
                                                        const std::optional<at::Tensor>& noise,
                                                        std::optional<at::Generator> generator, int64_t channel_dim) {
  const GateLayout layout = check_gate_args(x, p, noise, channel_dim);
  TORCH_CHECK_VALUE(!layout.channels_innermost || layout.channels < (int64_t(1) << 30),
                    "bernoulli_gate: CUDA supports fewer than 2^30 channels with the channels last, got K = ",
                    layout.channels);
  const c10::cuda::CUDAGuard guard(x.device());
  if (host_value_checks()) check_probabilities_on_host(p);
  const at::Tensor p_c = p.contiguous();
  at::Tensor mask = at::empty_like(p_c);
  const at::Tensor x_c = to_gate_memory(x, layout);
  at::Tensor y = at::empty_like(x_c);
  const int64_t B = layout.batch, K = layout.channels, S = layout.positions;
  if (p_c.numel() == 0) return {y, mask};
  // Uniforms given are compared in p's opmath dtype, as on the CPU.
  at::Tensor u;
  if (hard && noise.has_value()) u = noise->contiguous().to(opmath_dtype(p.scalar_type()));
  at::PhiloxCudaState philox;
  if (hard && !u.defined()) philox = philox_state(generator);
  const GateDraw draw{FloatArray(p_c), FloatArray(u), FloatArray(mask), hard, philox};
  const auto stream = at::cuda::getCurrentCUDAStream();
  if (x.numel() == 0) {
    launch_gate_mask(draw, B * K, stream);
  } else if (layout.channels_innermost) {
    launch_gate_forward_columns(x_c, y, draw, B, S, K, stream);
  } else {
    launch_gate_forward_rows(x_c, y, draw, B * K, S, stream);
  }
  return {y, mask};
}

std::tuple<at::Tensor, at::Tensor> bernoulli_gate_backward_cuda(const at::Tensor& grad_y, const at::Tensor& x,
                                                                 const at::Tensor& mask, int64_t channel_dim) {
  const GateLayout layout = check_gate_args(x, mask, std::nullopt, channel_dim, "mask");
  check_grad_like(grad_y, x, "bernoulli_gate_backward", "grad_y", "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor x_c = to_gate_memory(x, layout);
  const at::Tensor gy_c = to_gate_memory(grad_y, layout);
  const at::Tensor mask_c = mask.contiguous();
  at::Tensor grad_x = at::empty_like(x_c);
  const int64_t B = layout.batch, K = layout.channels, S = layout.positions;
  if (x.numel() == 0) return {grad_x, at::zeros({B, K}, mask.options())};
  // grad_p in the mask's dtype, written once by the kernels (every element is a row's or a tile's sum).
  at::Tensor grad_p = at::empty({B, K}, mask.options());
  const auto stream = at::cuda::getCurrentCUDAStream();
  if (layout.channels_innermost) {
    launch_gate_backward_columns(gy_c, x_c, grad_x, FloatArray(mask_c), FloatArray(grad_p), B, S, K, stream);
  } else {
    launch_gate_backward_rows(gy_c, x_c, grad_x, FloatArray(mask_c), FloatArray(grad_p), B * K, S, stream);
  }
  return {grad_x, grad_p};
}

}  // namespace

TORCH_LIBRARY_IMPL(picnn, CUDA, m) {
  m.impl("bernoulli_gate", &bernoulli_gate_cuda);
  m.impl("bernoulli_gate_backward", &bernoulli_gate_backward_cuda);
  m.impl("philox_uniform", &philox_uniform_cuda);
}

}  // namespace picnn
