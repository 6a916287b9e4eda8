// CUDA kernels of bernoulli_gate for memory (B, K, S) (contiguous maps): the forward, which draws the mask,
// and the straight-through backward, with `group` lanes of a warp on each (sample, channel) row.
#include <ATen/Dispatch.h>

#include "../common/gate_spans.h"
#include "../common/philox.h"
#include "gate_kernels.cuh"

namespace picnn {
namespace {

// Memory (B, K, S), forward: `group` lanes of a warp share a row (b, k) of S elements (rows_group_for: up to
// kUnroll packs per lane). The row's uniform is
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
    // kUnroll packs per lane and step, all loads before the first store: a short row (rows_group_for: at most
    // kUnroll packs per lane) is one step with its loads in flight together. One loop for the whole row, not an
    // unrolled loop and a one-pack remainder. A pack past the row is loaded from the row's last pack instead
    // and not stored (unconditional loads: 39-40 registers on nvcc 13.0; predicated ones took 46-64 here and
    // 64-121 in the backward).
    for (int64_t pk = span.first_pack + lane_in_group; pk < span.last_pack; pk += kUnroll * group) {
      P v[kUnroll];
#pragma unroll
      for (int t = 0; t < kUnroll; ++t) v[t] = xp[min64(pk + t * group, span.last_pack - 1)];
#pragma unroll
      for (int t = 0; t < kUnroll; ++t) {
        if (pk + t * group < span.last_pack) {
          scale_pack(v[t], scale);
          yp[pk + t * group] = v[t];
        }
      }
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
      // A pack's sum of grad_y * x, which the caller adds to the lane's sum only for a pack inside the row.
      auto packs = [&](P& g, const P& v) -> acc_t {
        acc_t part = 0;
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          const acc_t gj = static_cast<acc_t>(g.v[j]);
          part += gj * static_cast<acc_t>(v.v[j]);
          g.v[j] = static_cast<scalar_t>(gj * scale);
        }
        return part;
      };
      for (int64_t pk = span.first_pack + lane_in_group; pk < span.last_pack; pk += kUnroll * group) {
        P g[kUnroll], v[kUnroll];  // as in the forward: the loads of a step first (past the row: its last pack)
#pragma unroll
        for (int t = 0; t < kUnroll; ++t) {
          const int64_t at = min64(pk + t * group, span.last_pack - 1);
          g[t] = gp[at];
          v[t] = xp[at];
        }
#pragma unroll
        for (int t = 0; t < kUnroll; ++t) {
          const acc_t part = packs(g[t], v[t]);
          if (pk + t * group < span.last_pack) {
            sum += part;
            gxp[pk + t * group] = g[t];
          }
        }
      }
    }
    for (int width = group / 2; width > 0; width /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, width, group);
    if (row < rows && lane_in_group == 0) grad_p.store(row, static_cast<double>(sum));
  }
}

}  // namespace

void launch_gate_forward_rows(const at::Tensor& x, const at::Tensor& y, const GateDraw& draw, int64_t rows,
                              int64_t S, cudaStream_t stream) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bernoulli_gate_rows_cuda", [&] {
    const scalar_t* in = x.data_ptr<scalar_t>();
    scalar_t* out = y.data_ptr<scalar_t>();
    with_vec_width<scalar_t>(aligned16(in) && aligned16(out), [&]<int VEC>() {
      const int group = rows_group_for((S + VEC - 1) / VEC, kUnroll);
      PICNN_LAUNCH((gate_forward_rows_kernel<scalar_t, VEC>), grid_for(rows * group), kThreads, 0, stream)(
          in, out, draw.p, draw.noise, draw.mask, rows, S, group, draw.hard, draw.philox);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

void launch_gate_backward_rows(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& grad_x,
                               FloatArray mask, FloatArray grad_p, int64_t rows, int64_t S, cudaStream_t stream) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bernoulli_gate_backward_rows_cuda", [&] {
    const scalar_t* g = grad_y.data_ptr<scalar_t>();
    const scalar_t* in = x.data_ptr<scalar_t>();
    scalar_t* gx = grad_x.data_ptr<scalar_t>();
    with_vec_width<scalar_t>(aligned16(g) && aligned16(in) && aligned16(gx), [&]<int VEC>() {
      const int group = rows_group_for((S + VEC - 1) / VEC, kUnroll);
      PICNN_LAUNCH((gate_backward_rows_kernel<scalar_t, VEC>), grid_for(rows * group), kThreads, 0, stream)(
          g, in, gx, mask, grad_p, rows, S, group);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

}  // namespace picnn
