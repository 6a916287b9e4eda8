// CUDA kernels of bernoulli_gate: the mask draw, the fused forward and the fused straight-through
// backward, for memory (B, K, S) (contiguous) and (B, S, K) (channels_last, tokens).
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../common/checks.h"
#include "../common/philox.h"
#include "cuda_utils.cuh"

namespace picnn {
namespace {

// mask[i] = (u_i < p_i) or p_i. A p outside [0, 1] or NaN stops the kernel with a message (a device-side
// assertion: the normal path pays no synchronisation for the check).
template <typename p_t>
__global__ void gate_mask_kernel(const p_t* __restrict__ p, const opmath_t<p_t>* __restrict__ noise,
                                 p_t* __restrict__ mask, int64_t n, bool hard, at::PhiloxCudaState philox) {
  using acc_t = opmath_t<p_t>;
  const auto [seed, offset] = at::cuda::philox::unpack(philox);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const acc_t prob = static_cast<acc_t>(p[i]);
    if (!(prob >= acc_t(0) && prob <= acc_t(1))) {
      printf("picnn_ext bernoulli_gate: p must hold probabilities in [0, 1] (no NaN); flat index %lld is %f\n",
             static_cast<long long>(i), static_cast<double>(prob));
      __trap();
    }
    if (!hard) {
      mask[i] = p[i];
    } else {
      const acc_t u = noise != nullptr ? noise[i] : static_cast<acc_t>(philox_uniform(seed, offset, i));
      mask[i] = u < prob ? p_t(1) : p_t(0);
    }
  }
}

__global__ void philox_uniform_kernel(float* __restrict__ out, int64_t n, uint64_t seed, uint64_t offset) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = philox_uniform(seed, offset, i);
  }
}

// Forward. `row_of(i)` maps a pack index to the row of `scale` it uses (channel-first: one scale per pack,
// VEC divides S) or, channel-last, to the first of VEC consecutive channels (VEC divides K).
template <typename scalar_t, int VEC, bool kChannelsInnermost>
__global__ void gate_forward_kernel(const scalar_t* __restrict__ x, const opmath_t<scalar_t>* __restrict__ scale,
                                    scalar_t* __restrict__ y, int64_t packs, int64_t S, int64_t K) {
  using P = Pack<scalar_t, VEC>;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < packs;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    P v = reinterpret_cast<const P*>(x)[i];
    if constexpr (kChannelsInnermost) {
      const int64_t element = i * VEC;                       // (b * S + s) * K + k
      const int64_t k = element % K, b = element / (S * K);
      const opmath_t<scalar_t>* m = scale + b * K + k;
#pragma unroll
      for (int j = 0; j < VEC; ++j) v.v[j] = static_cast<scalar_t>(static_cast<opmath_t<scalar_t>>(v.v[j]) * m[j]);
    } else {
      const opmath_t<scalar_t> m = scale[(i * VEC) / S];
#pragma unroll
      for (int j = 0; j < VEC; ++j) v.v[j] = static_cast<scalar_t>(static_cast<opmath_t<scalar_t>>(v.v[j]) * m);
    }
    reinterpret_cast<P*>(y)[i] = v;
  }
}

// Backward, memory (B, K, S): GROUP lanes of a warp share one row; each pack gives grad_x = grad_y * m and
// adds grad_y * x to the lane's sum, and a shuffle reduction over the group gives grad_p of the row.
template <typename scalar_t, int VEC, int GROUP>
__global__ void gate_backward_rows_kernel(const scalar_t* __restrict__ gy, const scalar_t* __restrict__ x,
                                          const opmath_t<scalar_t>* __restrict__ scale, scalar_t* __restrict__ gx,
                                          opmath_t<scalar_t>* __restrict__ gp, int64_t rows, int64_t S) {
  using acc_t = opmath_t<scalar_t>;
  using P = Pack<scalar_t, VEC>;
  const int lane = threadIdx.x % GROUP;
  // Every lane of a warp runs the same number of iterations (the shuffle needs all 32), so the loop walks
  // warp-sized bundles of rows and lanes past the last row only join the reduction.
  const int64_t rows_per_warp = 32 / GROUP;
  const int64_t first_row = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32 * rows_per_warp;
  const int64_t rows_per_step = static_cast<int64_t>(gridDim.x) * blockDim.x / GROUP;
  const int64_t packs_per_row = S / VEC;
  for (int64_t base = first_row; base < rows; base += rows_per_step) {
    const int64_t row = base + (threadIdx.x % 32) / GROUP;
    acc_t acc = 0;
    if (row < rows) {
      const acc_t m = scale[row];
      const P* g_row = reinterpret_cast<const P*>(gy + row * S);
      const P* x_row = reinterpret_cast<const P*>(x + row * S);
      P* out_row = reinterpret_cast<P*>(gx + row * S);
      for (int64_t t = lane; t < packs_per_row; t += GROUP) {
        P g = g_row[t];
        const P v = x_row[t];
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          const acc_t gj = static_cast<acc_t>(g.v[j]);
          acc += gj * static_cast<acc_t>(v.v[j]);
          g.v[j] = static_cast<scalar_t>(gj * m);
        }
        out_row[t] = g;
      }
    }
#pragma unroll
    for (int width = GROUP / 2; width > 0; width /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, width, GROUP);
    if (row < rows && lane == 0) gp[row] = acc;
  }
}

// Backward, memory (B, S, K): a thread owns VEC channels of one sample over a chunk of positions, so loads
// are coalesced along K; partial sums go to a (B, chunks, K) workspace reduced in a fixed order
// (deterministic, no atomics).
template <typename scalar_t, int VEC>
__global__ void gate_backward_columns_kernel(const scalar_t* __restrict__ gy, const scalar_t* __restrict__ x,
                                             const opmath_t<scalar_t>* __restrict__ scale,
                                             scalar_t* __restrict__ gx, opmath_t<scalar_t>* __restrict__ partial,
                                             int64_t B, int64_t S, int64_t K, int64_t chunks) {
  using acc_t = opmath_t<scalar_t>;
  using P = Pack<scalar_t, VEC>;
  const int64_t k_packs = K / VEC;
  const int64_t chunk_len = (S + chunks - 1) / chunks;
  const int64_t tasks = B * chunks * k_packs;
  for (int64_t task = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; task < tasks;
       task += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t kp = task % k_packs;
    const int64_t chunk = (task / k_packs) % chunks;
    const int64_t b = task / (k_packs * chunks);
    const int64_t k0 = kp * VEC;
    acc_t m[VEC], acc[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      m[j] = scale[b * K + k0 + j];
      acc[j] = 0;
    }
    const int64_t s_end = std::min(S, (chunk + 1) * chunk_len);
    for (int64_t s = chunk * chunk_len; s < s_end; ++s) {
      const int64_t pack = ((b * S + s) * K + k0) / VEC;
      P g = reinterpret_cast<const P*>(gy)[pack];
      const P v = reinterpret_cast<const P*>(x)[pack];
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const acc_t gj = static_cast<acc_t>(g.v[j]);
        acc[j] += gj * static_cast<acc_t>(v.v[j]);
        g.v[j] = static_cast<scalar_t>(gj * m[j]);
      }
      reinterpret_cast<P*>(gx)[pack] = g;
    }
#pragma unroll
    for (int j = 0; j < VEC; ++j) partial[(b * chunks + chunk) * K + k0 + j] = acc[j];
  }
}

template <typename acc_t>
__global__ void reduce_chunks_kernel(const acc_t* __restrict__ partial, acc_t* __restrict__ gp, int64_t B,
                                     int64_t chunks, int64_t K) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < B * K;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = i / K, k = i % K;
    acc_t total = 0;
    for (int64_t c = 0; c < chunks; ++c) total += partial[(b * chunks + c) * K + k];
    gp[i] = total;
  }
}

// Calls f.template operator()<VEC>() with the widest VEC that divides `divisible` and keeps every
// pointer 16-byte aligned, else VEC = 1.
template <typename scalar_t, typename F>
void with_vec_width(int64_t divisible, std::initializer_list<const void*> pointers, F&& f) {
  constexpr int kWide = vec_width<scalar_t>();
  bool wide = divisible % kWide == 0;
  for (const void* ptr : pointers) wide = wide && aligned16(ptr);
  if (wide) {
    f.template operator()<kWide>();
  } else {
    f.template operator()<1>();
  }
}

void check_probabilities_on_host(const at::Tensor& p) {
  const at::Tensor bad = (p < 0) | (p > 1) | p.isnan();
  TORCH_CHECK_VALUE(!bad.any().item<bool>(), "bernoulli_gate: p must hold probabilities in [0, 1] (no NaN)");
}

at::Tensor compute_mask_cuda(const at::Tensor& p, bool hard, const std::optional<at::Tensor>& noise,
                             const std::optional<at::Generator>& generator) {
  if (host_value_checks()) check_probabilities_on_host(p);
  const at::Tensor p_c = p.contiguous();
  at::Tensor mask = at::empty_like(p_c);
  const int64_t n = p_c.numel();
  if (n == 0) return mask;
  const auto stream = at::cuda::getCurrentCUDAStream();
  at::PhiloxCudaState philox;
  if (hard && !noise.has_value()) philox = philox_state(generator);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "bernoulli_gate_mask_cuda", [&] {
    using acc_t = opmath_t<scalar_t>;
    at::Tensor u;
    if (hard && noise.has_value()) u = noise->contiguous().to(c10::CppTypeToScalarType<acc_t>::value);
    gate_mask_kernel<scalar_t><<<grid_for(n), kThreads, 0, stream>>>(
        p_c.data_ptr<scalar_t>(), u.defined() ? u.data_ptr<acc_t>() : nullptr, mask.data_ptr<scalar_t>(), n, hard,
        philox);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return mask;
}

at::Tensor philox_uniform_cuda(const at::Tensor& like, int64_t seed, int64_t offset) {
  TORCH_CHECK_VALUE(like.dim() == 2, "philox_uniform: like must have shape (B, K), got ", like.sizes());
  const c10::cuda::CUDAGuard guard(like.device());
  at::Tensor u = at::empty(like.sizes(), like.options().dtype(at::kFloat));
  if (u.numel() == 0) return u;
  philox_uniform_kernel<<<grid_for(u.numel()), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      u.data_ptr<float>(), u.numel(), static_cast<uint64_t>(seed), static_cast<uint64_t>(offset));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return u;
}

std::tuple<at::Tensor, at::Tensor> bernoulli_gate_cuda(const at::Tensor& x, const at::Tensor& p, bool hard,
                                                        const std::optional<at::Tensor>& noise,
                                                        std::optional<at::Generator> generator, int64_t channel_dim) {
  const GateLayout layout = check_gate_args(x, p, noise, channel_dim);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor mask = compute_mask_cuda(p, hard, noise, generator);
  const at::Tensor x_c = to_gate_memory(x, layout);
  at::Tensor y = at::empty_like(x_c);
  if (x.numel() == 0) return {y, mask};
  const at::Tensor scale = mask.to(opmath_dtype(x.scalar_type())).contiguous();
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t S = layout.positions, K = layout.channels;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bernoulli_gate_cuda", [&] {
    const scalar_t* in = x_c.data_ptr<scalar_t>();
    scalar_t* out = y.data_ptr<scalar_t>();
    const auto* s = scale.data_ptr<opmath_t<scalar_t>>();
    with_vec_width<scalar_t>(layout.channels_innermost ? K : S, {in, out}, [&]<int VEC>() {
      const int64_t packs = x.numel() / VEC;
      if (layout.channels_innermost) {
        gate_forward_kernel<scalar_t, VEC, true><<<grid_for(packs), kThreads, 0, stream>>>(in, s, out, packs, S, K);
      } else {
        gate_forward_kernel<scalar_t, VEC, false><<<grid_for(packs), kThreads, 0, stream>>>(in, s, out, packs, S, K);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {y, mask};
}

// The smallest power-of-two group of lanes (up to a warp) that covers a row's packs in one sweep.
int group_size_for(int64_t packs_per_row) {
  int group = 1;
  while (group < 32 && group < packs_per_row) group *= 2;
  return group;
}

template <typename scalar_t, int VEC>
void launch_backward_rows(const scalar_t* gy, const scalar_t* x, const opmath_t<scalar_t>* scale, scalar_t* gx,
                          opmath_t<scalar_t>* gp, int64_t rows, int64_t S, cudaStream_t stream) {
  const int group = group_size_for(S / VEC);
  const int64_t blocks = grid_for(rows * group);
#define PICNN_LAUNCH_ROWS(G)                                                                              \
  case G:                                                                                                 \
    gate_backward_rows_kernel<scalar_t, VEC, G><<<blocks, kThreads, 0, stream>>>(gy, x, scale, gx, gp, rows, S); \
    break;
  switch (group) {
    PICNN_LAUNCH_ROWS(1)
    PICNN_LAUNCH_ROWS(2)
    PICNN_LAUNCH_ROWS(4)
    PICNN_LAUNCH_ROWS(8)
    PICNN_LAUNCH_ROWS(16)
    PICNN_LAUNCH_ROWS(32)
  }
#undef PICNN_LAUNCH_ROWS
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> bernoulli_gate_backward_cuda(const at::Tensor& grad_y, const at::Tensor& x,
                                                                 const at::Tensor& mask, int64_t channel_dim) {
  const GateLayout layout = check_gate_args(x, mask, std::nullopt, channel_dim, "mask");
  check_grad_like(grad_y, x, "bernoulli_gate_backward", "grad_y", "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor x_c = to_gate_memory(x, layout);
  const at::Tensor gy_c = to_gate_memory(grad_y, layout);
  at::Tensor grad_x = at::empty_like(x_c);
  const at::ScalarType acc_dtype = opmath_dtype(x.scalar_type());
  const int64_t B = layout.batch, K = layout.channels, S = layout.positions;
  if (x.numel() == 0) return {grad_x, at::zeros({B, K}, mask.options())};
  at::Tensor grad_p = at::empty({B, K}, mask.options().dtype(acc_dtype));
  const at::Tensor scale = mask.to(acc_dtype).contiguous();
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bernoulli_gate_backward_cuda", [&] {
    using acc_t = opmath_t<scalar_t>;
    const scalar_t* g = gy_c.data_ptr<scalar_t>();
    const scalar_t* in = x_c.data_ptr<scalar_t>();
    scalar_t* gx = grad_x.data_ptr<scalar_t>();
    const acc_t* s = scale.data_ptr<acc_t>();
    acc_t* gp = grad_p.data_ptr<acc_t>();
    with_vec_width<scalar_t>(layout.channels_innermost ? K : S, {g, in, gx}, [&]<int VEC>() {
      if (!layout.channels_innermost) {
        launch_backward_rows<scalar_t, VEC>(g, in, s, gx, gp, B * K, S, stream);
        return;
      }
      // Split positions into chunks so that about 2^18 threads are busy, then reduce the chunks.
      const int64_t column_tasks = B * (K / VEC);
      const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(S, ((1 << 18) + column_tasks - 1) / column_tasks));
      at::Tensor partial = chunks == 1 ? grad_p : at::empty({B, chunks, K}, grad_p.options());
      gate_backward_columns_kernel<scalar_t, VEC><<<grid_for(column_tasks * chunks), kThreads, 0, stream>>>(
          g, in, s, gx, partial.data_ptr<acc_t>(), B, S, K, chunks);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (chunks > 1) {
        reduce_chunks_kernel<acc_t><<<grid_for(B * K), kThreads, 0, stream>>>(partial.data_ptr<acc_t>(), gp, B,
                                                                               chunks, K);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
  });
  return {grad_x, grad_p.to(mask.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(picnn, CUDA, m) {
  m.impl("bernoulli_gate", &bernoulli_gate_cuda);
  m.impl("bernoulli_gate_backward", &bernoulli_gate_backward_cuda);
  m.impl("philox_uniform", &philox_uniform_cuda);
}

}  // namespace picnn
