// CUDA kernels of bernoulli_gate for memory (B, S, K) (channels_last maps, tokens): the forward, which draws
// a sample's mask into shared memory once per block, and the straight-through backward, one block per
// (sample, tile of channels) so that it writes grad_p itself.
#include <ATen/Dispatch.h>
#include <ATen/cuda/detail/IntegerDivider.cuh>

#include <algorithm>

#include "../common/gate_spans.h"
#include "../common/philox.h"
#include "gate_kernels.cuh"

namespace picnn {
namespace {

// Memory (B, S, K), forward. A task is (sample b, chunk of positions [s_begin, s_end), tile of channels
// [k0, k1)); the block first puts the tile's mask values, as acc_t, in shared memory, then scales the chunk's
// elements of those channels with whole packs, reading each scale from shared memory. With kDraw (K up to 16K)
// the tile is all K channels, so the chunk is one contiguous run of the flat buffer, and the block draws the
// values itself (one Philox block per four), the block of the sample's first chunk writing them out. Without it
// (K above 16K, where drawing K values per chunk of few positions would cost more than reading them) it copies
// them from the mask gate_mask_kernel wrote: the dtype switch of FloatArray stays in that copy, out of the loop
// over the elements, and the chunk is one run per position.
template <typename scalar_t, int VEC, bool kDraw>
__global__ void __launch_bounds__(kThreads)
    gate_forward_columns_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, FloatArray p,
                                FloatArray noise, FloatArray mask, int64_t B, int64_t S, int64_t K,
                                PositionChunks plan, int64_t tiles, int64_t tile_channels,
                                at::cuda::detail::IntDivider<unsigned int> k_divider, bool hard,
                                at::PhiloxCudaState philox) {
  using acc_t = opmath_t<scalar_t>;
  using P = Pack<scalar_t, VEC>;
  PICNN_DYNAMIC_SHARED(unsigned char, shared_bytes);
  acc_t* scale = reinterpret_cast<acc_t*>(shared_bytes);
  const auto [seed, offset] = at::cuda::philox::unpack(philox);
  const P* xp = reinterpret_cast<const P*>(x);
  P* yp = reinterpret_cast<P*>(y);
  const int64_t per_sample = plan.chunks_per_sample * tiles, tasks = B * per_sample;
  for (int64_t task = blockIdx.x; task < tasks; task += gridDim.x) {
    // kDraw has one tile: no division by `tiles` per task.
    const int64_t b = task / per_sample, chunk = kDraw ? task % per_sample : task % per_sample / tiles;
    const int64_t tile = kDraw ? 0 : task % tiles;
    const int64_t k0 = tile * tile_channels, k1 = min64(K, k0 + tile_channels);
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
    } else {
      for (int64_t k = k0 + threadIdx.x; k < k1; k += blockDim.x) scale[k - k0] = static_cast<acc_t>(mask.load(first + k));
    }
    __syncthreads();
    // Scales the elements [begin, end), whose first is channel k0 (kDraw: channel of e = (e - begin) % K, 32-bit,
    // as a run is below 2^31 elements, position_chunks; else the run lies in one position: e - begin).
    auto scale_run = [&](int64_t begin, int64_t end) {
      auto channel = [&](int64_t e) -> unsigned int {
        if constexpr (kDraw) {
          return k_divider.mod(static_cast<unsigned int>(e - begin));
        } else {
          return static_cast<unsigned int>(e - begin);
        }
      };
      const PackSpan span = pack_span(begin, end, VEC);
      for (int64_t e = begin + threadIdx.x; e < span.head_end; e += blockDim.x) {
        y[e] = static_cast<scalar_t>(static_cast<acc_t>(x[e]) * scale[channel(e)]);
      }
      for (int64_t e = span.tail_begin + threadIdx.x; e < end; e += blockDim.x) {
        y[e] = static_cast<scalar_t>(static_cast<acc_t>(x[e]) * scale[channel(e)]);
      }
      auto scale_packed = [&](P& v, int64_t pk) {
        unsigned int k = channel(pk * VEC);
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          v.v[j] = static_cast<scalar_t>(static_cast<acc_t>(v.v[j]) * scale[k]);
          ++k;
          if constexpr (kDraw) {
            if (k == K) k = 0;
          }
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
    };
    const int64_t s_begin = chunk * plan.positions_per_chunk;
    const int64_t s_end = min64(S, s_begin + plan.positions_per_chunk);
    if constexpr (kDraw) {
      scale_run((b * S + s_begin) * K, (b * S + s_end) * K);
    } else {
      for (int64_t s = s_begin; s < s_end; ++s) scale_run((b * S + s) * K + k0, (b * S + s) * K + k1);
    }
    __syncthreads();  // the next task overwrites `scale`
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
  PICNN_DYNAMIC_SHARED(unsigned char, shared_bytes);
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

// Shared memory of a kernel above 48 KiB must be asked for; false where the device cannot give it.
template <typename Kernel>
bool reserve_shared_memory(Kernel kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return true;
  if (bytes > at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin) return false;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  return true;
}

}  // namespace

void launch_gate_forward_columns(const at::Tensor& x, const at::Tensor& y, const GateDraw& draw, int64_t B,
                                 int64_t S, int64_t K, cudaStream_t stream) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bernoulli_gate_columns_cuda", [&] {
    using acc_t = opmath_t<scalar_t>;
    const scalar_t* in = x.data_ptr<scalar_t>();
    scalar_t* out = y.data_ptr<scalar_t>();
    with_vec_width<scalar_t>(aligned16(in) && aligned16(out), [&]<int VEC>() {
      const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
      const at::cuda::detail::IntDivider<unsigned int> k_divider(static_cast<unsigned int>(K));
      const size_t shared = static_cast<size_t>(K) * sizeof(acc_t);
      // Above 16K channels a chunk holds few positions, so drawing the sample's K values in every block would cost
      // more than reading them from the mask kernel's output.
      if (K <= 16384 && reserve_shared_memory(gate_forward_columns_kernel<scalar_t, VEC, true>, shared)) {
        const PositionChunks plan = position_chunks(S, K, 16384);
        const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(B * plan.chunks_per_sample, sms * 16));
        PICNN_LAUNCH((gate_forward_columns_kernel<scalar_t, VEC, true>), blocks, kThreads, shared, stream)(
            in, out, draw.p, draw.noise, draw.mask, B, S, K, plan, 1, K, k_divider, draw.hard, draw.philox);
      } else {
        // Tiles of channels whose scales fit in 48 KiB of shared memory (no opt-in needed, so this path always
        // launches), of even width; chunks of about 4 tiles of elements (the tile's copy from the mask, in L2,
        // is then a quarter of the chunk's reads at most).
        const int64_t tiles =
            std::max<int64_t>(1, (K * static_cast<int64_t>(sizeof(acc_t)) + 48 * 1024 - 1) / (48 * 1024));
        const int64_t tile_channels = (K + tiles - 1) / tiles;
        const PositionChunks plan = position_chunks(S, tile_channels, 4 * tile_channels);
        const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(B * plan.chunks_per_sample * tiles, sms * 16));
        launch_gate_mask(draw, B * K, stream);
        PICNN_LAUNCH((gate_forward_columns_kernel<scalar_t, VEC, false>), blocks, kThreads,
                     static_cast<size_t>(tile_channels) * sizeof(acc_t), stream)(
            in, out, draw.p, draw.noise, draw.mask, B, S, K, plan, tiles, tile_channels, k_divider, draw.hard,
            draw.philox);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

void launch_gate_backward_columns(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& grad_x,
                                  FloatArray mask, FloatArray grad_p, int64_t B, int64_t S, int64_t K,
                                  cudaStream_t stream) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bernoulli_gate_backward_columns_cuda",
                                  [&] {
    using acc_t = opmath_t<scalar_t>;
    const scalar_t* g = grad_y.data_ptr<scalar_t>();
    const scalar_t* in = x.data_ptr<scalar_t>();
    scalar_t* gx = grad_x.data_ptr<scalar_t>();
    const bool wide = aligned16(g) && aligned16(in) && aligned16(gx) && K % vec_width<scalar_t>() == 0;
    with_vec_width<scalar_t>(wide, [&]<int VEC>() {
      const int64_t k_packs = K / VEC;
      const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
      // tx packs of channels per block row: the widest power of two up to 32 (and to the row) whose B * k_tiles
      // tasks still come to 16 per SM (4 waves of the 4 blocks of 256 threads per SM that the register budget
      // keeps resident, benchmarks/sass_budgets.py), but not below 8 (the ty partial sums the block adds grow
      // as tx shrinks). Few tasks run in one or two waves of which the last leaves SMs idle (float32 K = 512:
      // 1024 tasks of 32 packs, 4096 of 8).
      int tx = group_size_for(k_packs);
      while (tx > 8 && B * ((k_packs + tx - 1) / tx) < 16 * sms) tx /= 2;
      const int ty = kThreads / tx;
      const int64_t k_tiles = (k_packs + tx - 1) / tx;
      // One block per task up to 64 per SM: the block scheduler starts a block where one finishes, while a grid
      // capped below the tasks has blocks of two tasks and of one, and its tail leaves SMs idle.
      const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(B * k_tiles, sms * 64));
      const size_t shared = static_cast<size_t>(kThreads) * VEC * sizeof(acc_t);
      PICNN_LAUNCH((gate_backward_columns_kernel<scalar_t, VEC>), blocks, dim3(tx, ty), shared, stream)(
          g, in, gx, mask, grad_p, B, S, K, k_tiles);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

}  // namespace picnn
