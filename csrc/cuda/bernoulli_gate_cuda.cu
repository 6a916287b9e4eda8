// CUDA kernels of bernoulli_gate: the fused forward (which draws the mask itself) and the fused
// straight-through backward, for memory (B, K, S) (contiguous) and (B, S, K) (channels_last, tokens).
//
// Every kernel vectorises with 16-byte packs of the flat buffer whatever H*W or K is (common/gate_spans.h
// splits a run of elements into a scalar head, whole packs and a scalar tail), reads p and the mask and
// writes the mask and grad_p in their own dtype (no conversion launches), and keys every uniform by the
// (sample, channel) index b * K + k, one Philox block for four of them, so CPU and CUDA masks are identical.
#include <ATen/Dispatch.h>
#include <ATen/cuda/detail/IntegerDivider.cuh>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../common/checks.h"
#include "../common/gate_spans.h"
#include "../common/philox.h"
#include "cuda_utils.cuh"

namespace picnn {
namespace {

constexpr int kUnroll = 4;  // packs a lane loads before it stores: several loads in flight per thread

// The mask of (sample, channel) index i: 1 where u < p (hard), p itself (soft), computed in double (exact for
// every float p and 24-bit u, so the comparison is the CPU's). A p outside [0, 1] or NaN stops the kernel with
// a device-side assertion that names p, after a line giving the index and the value.
__device__ __forceinline__ double gate_mask(double prob, float philox_u, const FloatArray& noise, bool hard, int64_t i,
                                            bool check) {
  if (check && !(prob >= 0.0 && prob <= 1.0)) {
    printf("picnn_ext bernoulli_gate: p must hold probabilities in [0, 1] (no NaN); p.flatten()[%lld] = %f\n",
           static_cast<long long>(i), prob);
    __assert_fail("bernoulli_gate: p must hold probabilities in [0, 1] (no NaN)", __FILE__, __LINE__, __func__);
  }
  if (!hard) return prob;
  const double u = noise.data != nullptr ? noise.load(i) : static_cast<double>(philox_u);
  return u < prob ? 1.0 : 0.0;
}

template <typename scalar_t, int VEC>
__device__ __forceinline__ void scale_pack(Pack<scalar_t, VEC>& v, opmath_t<scalar_t> m) {
#pragma unroll
  for (int j = 0; j < VEC; ++j) v.v[j] = static_cast<scalar_t>(static_cast<opmath_t<scalar_t>>(v.v[j]) * m);
}

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

// Memory (B, K, S), forward: `group` lanes of a warp share a row (b, k) of S elements. The row's uniform is
// word r % 4 of Philox block r / 4, computed once per block of four rows by one lane and shuffled to the
// others; the row's group leader checks p, writes the mask, and the group scales the row.
template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads)
    gate_forward_rows_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, FloatArray p,
                             FloatArray noise, FloatArray mask, int64_t rows, int64_t S, int group, bool hard,
                             at::PhiloxCudaState philox) {
  using acc_t = opmath_t<scalar_t>;
  using P = Pack<scalar_t, VEC>;
  const auto [seed, offset] = at::cuda::philox::unpack(philox);
  const bool draw = hard && noise.data == nullptr;
  const int lane = threadIdx.x % 32, lane_in_group = lane % group;
  const int64_t rows_per_warp = 32 / group;
  const int64_t warp = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * blockDim.x / 32;
  const P* xp = reinterpret_cast<const P*>(x);
  P* yp = reinterpret_cast<P*>(y);
  // The loop is uniform across the warp (every lane shuffles); lanes past the last row only lend a hand.
  for (int64_t base = warp * rows_per_warp; base < rows; base += warps * rows_per_warp) {
    const int64_t row = base + lane / group;
    float u = 0.0f;
    if (draw) {
      PhiloxBlock words{};
      if (computes_philox_block(row, base, lane, group)) words = philox_block(seed, offset, row >> 2);
      const int source = philox_source_lane(row, base, group);
      uint32_t w[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) w[j] = __shfl_sync(0xffffffffu, words.v[j], source);
      const int which = static_cast<int>(row & 3);
      u = word_to_uniform(which == 0 ? w[0] : which == 1 ? w[1] : which == 2 ? w[2] : w[3]);
    }
    if (row >= rows) continue;
    const double m = gate_mask(p.load(row), u, noise, hard, row, lane_in_group == 0);
    if (lane_in_group == 0) mask.store(row, m);
    const acc_t scale = static_cast<acc_t>(m);
    const int64_t begin = row * S, end = begin + S;
    const PackSpan span = pack_span(begin, end, VEC);
    for (int64_t e = begin + lane_in_group; e < span.head_end; e += group) {
      y[e] = static_cast<scalar_t>(static_cast<acc_t>(x[e]) * scale);
    }
    for (int64_t e = span.tail_begin + lane_in_group; e < end; e += group) {
      y[e] = static_cast<scalar_t>(static_cast<acc_t>(x[e]) * scale);
    }
    int64_t pk = span.first_pack + lane_in_group;
    for (; pk + (kUnroll - 1) * group < span.last_pack; pk += kUnroll * group) {
      P v[kUnroll];
#pragma unroll
      for (int t = 0; t < kUnroll; ++t) v[t] = xp[pk + t * group];
#pragma unroll
      for (int t = 0; t < kUnroll; ++t) {
        scale_pack(v[t], scale);
        yp[pk + t * group] = v[t];
      }
    }
    for (; pk < span.last_pack; pk += group) {
      P v = xp[pk];
      scale_pack(v, scale);
      yp[pk] = v;
    }
  }
}

// Memory (B, K, S), backward: the same row groups; each lane sums grad_y * x over its elements, the group adds
// the lanes' sums with a fixed shuffle tree (deterministic), and the leader writes grad_p in the mask's dtype.
template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads)
    gate_backward_rows_kernel(const scalar_t* __restrict__ gy, const scalar_t* __restrict__ x,
                              scalar_t* __restrict__ gx, FloatArray mask, FloatArray grad_p, int64_t rows, int64_t S,
                              int group) {
  using acc_t = opmath_t<scalar_t>;
  using P = Pack<scalar_t, VEC>;
  const int lane = threadIdx.x % 32, lane_in_group = lane % group;
  const int64_t rows_per_warp = 32 / group;
  const int64_t warp = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * blockDim.x / 32;
  const P* gp = reinterpret_cast<const P*>(gy);
  const P* xp = reinterpret_cast<const P*>(x);
  P* gxp = reinterpret_cast<P*>(gx);
  for (int64_t base = warp * rows_per_warp; base < rows; base += warps * rows_per_warp) {
    const int64_t row = base + lane / group;
    acc_t sum = 0;
    if (row < rows) {
      const acc_t scale = static_cast<acc_t>(mask.load(row));
      const int64_t begin = row * S, end = begin + S;
      const PackSpan span = pack_span(begin, end, VEC);
      auto element = [&](int64_t e) {
        const acc_t g = static_cast<acc_t>(gy[e]);
        sum += g * static_cast<acc_t>(x[e]);
        gx[e] = static_cast<scalar_t>(g * scale);
      };
      for (int64_t e = begin + lane_in_group; e < span.head_end; e += group) element(e);
      for (int64_t e = span.tail_begin + lane_in_group; e < end; e += group) element(e);
      auto packs = [&](P& g, const P& v) {
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          const acc_t gj = static_cast<acc_t>(g.v[j]);
          sum += gj * static_cast<acc_t>(v.v[j]);
          g.v[j] = static_cast<scalar_t>(gj * scale);
        }
      };
      int64_t pk = span.first_pack + lane_in_group;
      for (; pk + (kUnroll - 1) * group < span.last_pack; pk += kUnroll * group) {
        P g[kUnroll], v[kUnroll];
#pragma unroll
        for (int t = 0; t < kUnroll; ++t) {
          g[t] = gp[pk + t * group];
          v[t] = xp[pk + t * group];
        }
#pragma unroll
        for (int t = 0; t < kUnroll; ++t) {
          packs(g[t], v[t]);
          gxp[pk + t * group] = g[t];
        }
      }
      for (; pk < span.last_pack; pk += group) {
        P g = gp[pk];
        packs(g, xp[pk]);
        gxp[pk] = g;
      }
    }
    for (int width = group / 2; width > 0; width /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, width, group);
    if (row < rows && lane_in_group == 0) grad_p.store(row, static_cast<double>(sum));
  }
}

// Memory (B, S, K), forward: a block owns sample b's positions [s_begin, s_end), a contiguous run of the flat
// buffer. With kDraw it first draws the K mask values of sample b into shared memory (one Philox block per
// four), the block of the sample's first chunk writing them out; without it (K above 16K)
// it reads the mask that gate_mask_kernel wrote. Then it scales the run with whole packs.
template <typename scalar_t, int VEC, bool kDraw>
__global__ void __launch_bounds__(kThreads)
    gate_forward_columns_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, FloatArray p,
                                FloatArray noise, FloatArray mask, int64_t B, int64_t S, int64_t K,
                                PositionChunks plan, at::cuda::detail::IntDivider<unsigned int> k_divider, bool hard,
                                at::PhiloxCudaState philox) {
  using acc_t = opmath_t<scalar_t>;
  using P = Pack<scalar_t, VEC>;
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  acc_t* scale = reinterpret_cast<acc_t*>(shared_bytes);
  const auto [seed, offset] = at::cuda::philox::unpack(philox);
  const P* xp = reinterpret_cast<const P*>(x);
  P* yp = reinterpret_cast<P*>(y);
  const int64_t tasks = B * plan.chunks_per_sample;
  for (int64_t task = blockIdx.x; task < tasks; task += gridDim.x) {
    const int64_t b = task / plan.chunks_per_sample, chunk = task % plan.chunks_per_sample;
    const int64_t first = b * K;  // the sample's mask indices [first, first + K)
    if constexpr (kDraw) {
      for (int64_t block = (first >> 2) + threadIdx.x; block <= (first + K - 1) >> 2; block += blockDim.x) {
        PhiloxBlock words{};
        if (hard && noise.data == nullptr) words = philox_block(seed, offset, block);
#pragma unroll
        for (int w = 0; w < 4; ++w) {
          const int64_t i = 4 * block + w;
          if (i < first || i >= first + K) continue;
          const double m = gate_mask(p.load(i), word_to_uniform(words.v[w]), noise, hard, i, chunk == 0);
          if (chunk == 0) mask.store(i, m);
          scale[i - first] = static_cast<acc_t>(m);
        }
      }
      __syncthreads();
    }
    const int64_t s_begin = chunk * plan.positions_per_chunk;
    const int64_t s_end = min64(S, s_begin + plan.positions_per_chunk);
    const int64_t begin = (b * S + s_begin) * K, end = (b * S + s_end) * K;
    // The channel of element e: (e - begin) % K, 32-bit (a run is below 2^31 elements, position_chunks).
    auto scale_at = [&](unsigned int k) -> acc_t {
      if constexpr (kDraw) {
        return scale[k];
      } else {
        return static_cast<acc_t>(mask.load(first + k));
      }
    };
    const PackSpan span = pack_span(begin, end, VEC);
    for (int64_t e = begin + threadIdx.x; e < span.head_end; e += blockDim.x) {
      y[e] = static_cast<scalar_t>(static_cast<acc_t>(x[e]) * scale_at(k_divider.mod(static_cast<unsigned int>(e - begin))));
    }
    for (int64_t e = span.tail_begin + threadIdx.x; e < end; e += blockDim.x) {
      y[e] = static_cast<scalar_t>(static_cast<acc_t>(x[e]) * scale_at(k_divider.mod(static_cast<unsigned int>(e - begin))));
    }
    auto scale_packed = [&](P& v, int64_t pk) {
      unsigned int k = k_divider.mod(static_cast<unsigned int>(pk * VEC - begin));
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        v.v[j] = static_cast<scalar_t>(static_cast<acc_t>(v.v[j]) * scale_at(k));
        if (++k == K) k = 0;
      }
    };
    int64_t pk = span.first_pack + threadIdx.x;
    const int64_t stride = blockDim.x;
    for (; pk + (kUnroll - 1) * stride < span.last_pack; pk += kUnroll * stride) {
      P v[kUnroll];
#pragma unroll
      for (int t = 0; t < kUnroll; ++t) v[t] = xp[pk + t * stride];
#pragma unroll
      for (int t = 0; t < kUnroll; ++t) {
        scale_packed(v[t], pk + t * stride);
        yp[pk + t * stride] = v[t];
      }
    }
    for (; pk < span.last_pack; pk += stride) {
      P v = xp[pk];
      scale_packed(v, pk);
      yp[pk] = v;
    }
    if constexpr (kDraw) __syncthreads();  // the next task's draw overwrites `scale`
  }
}

// Memory (B, S, K), backward: a block owns sample b and a tile of channels over all S positions, so it
// writes grad_p itself (no workspace, no second launch). Threads (tx, ty): tx a pack of VEC channels
// (K % VEC == 0 here), ty a stride of positions; the ty partial sums meet in shared memory and are added
// in a fixed order (deterministic).
template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads)
    gate_backward_columns_kernel(const scalar_t* __restrict__ gy, const scalar_t* __restrict__ x,
                                 scalar_t* __restrict__ gx, FloatArray mask, FloatArray grad_p, int64_t B, int64_t S,
                                 int64_t K, int64_t k_tiles) {
  using acc_t = opmath_t<scalar_t>;
  using P = Pack<scalar_t, VEC>;
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  acc_t* partial = reinterpret_cast<acc_t*>(shared_bytes);  // [blockDim.y][blockDim.x * VEC]
  const int tile_channels = blockDim.x * VEC;
  for (int64_t task = blockIdx.x; task < B * k_tiles; task += gridDim.x) {
    const int64_t b = task / k_tiles, tile = task % k_tiles;
    const int64_t k0 = (tile * blockDim.x + threadIdx.x) * VEC;
    const bool active = k0 < K;
    acc_t m[VEC], sum[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      m[j] = active ? static_cast<acc_t>(mask.load(b * K + k0 + j)) : acc_t(0);
      sum[j] = 0;
    }
    auto step = [&](P& g, const P& v) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const acc_t gj = static_cast<acc_t>(g.v[j]);
        sum[j] += gj * static_cast<acc_t>(v.v[j]);
        g.v[j] = static_cast<scalar_t>(gj * m[j]);
      }
    };
    if (active) {
      const P* gp = reinterpret_cast<const P*>(gy);
      const P* xp = reinterpret_cast<const P*>(x);
      P* gxp = reinterpret_cast<P*>(gx);
      const int64_t row_packs = K / VEC, first_pack = (b * S * K + k0) / VEC;
      int64_t s = threadIdx.y;
      for (; s + blockDim.y < S; s += 2 * blockDim.y) {  // two positions in flight
        const int64_t a = first_pack + s * row_packs, c = a + blockDim.y * row_packs;
        P g0 = gp[a], g1 = gp[c];
        const P v0 = xp[a], v1 = xp[c];
        step(g0, v0);
        step(g1, v1);
        gxp[a] = g0;
        gxp[c] = g1;
      }
      if (s < S) {
        const int64_t a = first_pack + s * row_packs;
        P g0 = gp[a];
        step(g0, xp[a]);
        gxp[a] = g0;
      }
    }
#pragma unroll
    for (int j = 0; j < VEC; ++j) partial[threadIdx.y * tile_channels + threadIdx.x * VEC + j] = sum[j];
    __syncthreads();
    if (threadIdx.y == 0 && active) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        acc_t total = 0;
        for (int r = 0; r < static_cast<int>(blockDim.y); ++r) total += partial[r * tile_channels + threadIdx.x * VEC + j];
        grad_p.store(b * K + k0 + j, static_cast<double>(total));
      }
    }
    __syncthreads();  // the next task overwrites `partial`
  }
}

// Calls f.template operator()<VEC>() with 16-byte packs when `wide` (every pointer aligned, and whatever the
// caller's layout needs), else VEC = 1.
template <typename scalar_t, typename F>
void with_vec_width(bool wide, F&& f) {
  if (wide) {
    f.template operator()<vec_width<scalar_t>()>();
  } else {
    f.template operator()<1>();
  }
}

void check_probabilities_on_host(const at::Tensor& p) {
  const at::Tensor bad = (p < 0) | (p > 1) | p.isnan();
  TORCH_CHECK_VALUE(!bad.any().item<bool>(), "bernoulli_gate: p must hold probabilities in [0, 1] (no NaN)");
}

// Shared memory of a kernel above 48 KiB must be asked for; false where the device cannot give it.
template <typename Kernel>
bool reserve_shared_memory(Kernel kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return true;
  if (bytes > at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin) return false;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  return true;
}

at::Tensor philox_uniform_cuda(const at::Tensor& like, int64_t seed, int64_t offset) {
  TORCH_CHECK_VALUE(like.dim() == 2, "philox_uniform: like must have shape (B, K), got ", like.sizes());
  const c10::cuda::CUDAGuard guard(like.device());
  at::Tensor u = at::empty(like.sizes(), like.options().dtype(at::kFloat));
  if (u.numel() == 0) return u;
  philox_uniform_kernel<<<grid_for((u.numel() + 3) / 4), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
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
  const FloatArray p_values(p_c), noise_values(u), mask_values(mask);
  const auto stream = at::cuda::getCurrentCUDAStream();
  auto mask_alone = [&] {
    gate_mask_kernel<<<grid_for((B * K + 3) / 4), kThreads, 0, stream>>>(p_values, noise_values, mask_values, B * K,
                                                                         hard, philox);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  if (x.numel() == 0) {
    mask_alone();
    return {y, mask};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bernoulli_gate_cuda", [&] {
    using acc_t = opmath_t<scalar_t>;
    const scalar_t* in = x_c.data_ptr<scalar_t>();
    scalar_t* out = y.data_ptr<scalar_t>();
    with_vec_width<scalar_t>(aligned16(in) && aligned16(out), [&]<int VEC>() {
      if (!layout.channels_innermost) {
        const int group = group_size_for((S + VEC - 1) / VEC);
        gate_forward_rows_kernel<scalar_t, VEC><<<grid_for(B * K * group), kThreads, 0, stream>>>(
            in, out, p_values, noise_values, mask_values, B * K, S, group, hard, philox);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        return;
      }
      const PositionChunks plan = position_chunks(S, K, 16384);
      const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(
          B * plan.chunks_per_sample, at::cuda::getCurrentDeviceProperties()->multiProcessorCount * 16));
      const at::cuda::detail::IntDivider<unsigned int> k_divider(static_cast<unsigned int>(K));
      const size_t shared = static_cast<size_t>(K) * sizeof(acc_t);
      // Above 16K channels a chunk holds few positions, so drawing the sample's K values in every block would cost
      // more than reading them from the mask kernel's output.
      if (K <= 16384 && reserve_shared_memory(gate_forward_columns_kernel<scalar_t, VEC, true>, shared)) {
        gate_forward_columns_kernel<scalar_t, VEC, true><<<blocks, kThreads, shared, stream>>>(
            in, out, p_values, noise_values, mask_values, B, S, K, plan, k_divider, hard, philox);
      } else {
        mask_alone();
        gate_forward_columns_kernel<scalar_t, VEC, false><<<blocks, kThreads, 0, stream>>>(
            in, out, p_values, noise_values, mask_values, B, S, K, plan, k_divider, hard, philox);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
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
  const FloatArray mask_values(mask_c), grad_p_values(grad_p);
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bernoulli_gate_backward_cuda", [&] {
    using acc_t = opmath_t<scalar_t>;
    const scalar_t* g = gy_c.data_ptr<scalar_t>();
    const scalar_t* in = x_c.data_ptr<scalar_t>();
    scalar_t* gx = grad_x.data_ptr<scalar_t>();
    const bool aligned = aligned16(g) && aligned16(in) && aligned16(gx);
    if (!layout.channels_innermost) {
      with_vec_width<scalar_t>(aligned, [&]<int VEC>() {
        const int group = group_size_for((S + VEC - 1) / VEC);
        gate_backward_rows_kernel<scalar_t, VEC><<<grid_for(B * K * group), kThreads, 0, stream>>>(
            g, in, gx, mask_values, grad_p_values, B * K, S, group);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
      return;
    }
    with_vec_width<scalar_t>(aligned && K % vec_width<scalar_t>() == 0, [&]<int VEC>() {
      const int64_t k_packs = K / VEC;
      const int tx = group_size_for(k_packs);  // a power of two up to 32 packs of channels per block row
      const int ty = kThreads / tx;
      const int64_t k_tiles = (k_packs + tx - 1) / tx;
      const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(
          B * k_tiles, at::cuda::getCurrentDeviceProperties()->multiProcessorCount * 16));
      const size_t shared = static_cast<size_t>(kThreads) * VEC * sizeof(acc_t);
      gate_backward_columns_kernel<scalar_t, VEC><<<blocks, dim3(tx, ty), shared, stream>>>(
          g, in, gx, mask_values, grad_p_values, B, S, K, k_tiles);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {grad_x, grad_p};
}

}  // namespace

TORCH_LIBRARY_IMPL(picnn, CUDA, m) {
  m.impl("bernoulli_gate", &bernoulli_gate_cuda);
  m.impl("bernoulli_gate_backward", &bernoulli_gate_backward_cuda);
  m.impl("philox_uniform", &philox_uniform_cuda);
}

}  // namespace picnn
