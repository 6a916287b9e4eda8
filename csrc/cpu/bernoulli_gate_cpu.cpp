// CPU kernels of bernoulli_gate: the mask draw, the fused forward and the fused straight-through
// backward. Parallel over (sample, channel) rows, one vectorised inner loop per row.
//
// The inner loops are plain loops under `omp simd`, which the compiler vectorises (reduction included)
// for every dtype; the portable at::vec types, compiled without AVX flags as an extension must be,
// measured 3.5x slower on the backward here.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>

#include "../common/checks.h"
#include "multiversion.h"
#include "philox_cpu.h"
#include "random_cpu.h"

namespace picnn {
namespace {

template <typename scalar_t>
using opmath_t = at::opmath_type<scalar_t>;

// Enough elements per task that a parallel region pays for itself.
constexpr int64_t kGrainElements = 32768;

int64_t row_grain(int64_t row_length) {
  return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(row_length, 1));
}

at::Tensor philox_uniform_cpu(const at::Tensor& like, int64_t seed, int64_t offset) {
  TORCH_CHECK_VALUE(like.dim() == 2, "philox_uniform: like must have shape (B, K), got ", like.sizes());
  at::Tensor u = at::empty(like.sizes(), like.options().dtype(at::kFloat));
  float* out = u.data_ptr<float>();
  const int64_t n = u.numel();
  constexpr int64_t kChunk = 4096;  // elements per task, a multiple of 4
  at::parallel_for(0, (n + kChunk - 1) / kChunk, 8, [&](int64_t first, int64_t last) {
    alignas(64) float drawn[kChunk];
    for (int64_t chunk = first; chunk < last; ++chunk) {
      const int64_t start = chunk * kChunk;
      const int64_t len = std::min(kChunk, n - start);
      philox_uniform_blocks(static_cast<uint64_t>(seed), static_cast<uint64_t>(offset),
                            static_cast<uint64_t>(start / 4), (len + 3) / 4, drawn);
      std::copy(drawn, drawn + len, out + start);
    }
  });
  return u;
}

// Whether p[0..n) are all probabilities (false for NaN too): a mask bit per element, OR-reduced, so that the
// loop vectorises (a short-circuit && chain does not).
template <typename scalar_t>
PICNN_MULTIVERSION bool all_probabilities(const scalar_t* p, int64_t n) {
  using acc_t = opmath_t<scalar_t>;
  int bad = 0;
#pragma omp simd reduction(| : bad)
  for (int64_t i = 0; i < n; ++i) {
    const acc_t v = static_cast<acc_t>(p[i]);
    bad |= static_cast<int>(!(v >= acc_t(0))) | static_cast<int>(!(v <= acc_t(1)));
  }
  return bad == 0;
}

// out = (u < p) as 0/1.
template <typename scalar_t, typename u_t>
PICNN_MULTIVERSION void threshold_row(const scalar_t* p, const u_t* u, scalar_t* out, int64_t n) {
  using acc_t = opmath_t<scalar_t>;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    out[i] = static_cast<acc_t>(u[i]) < static_cast<acc_t>(p[i]) ? scalar_t(1) : scalar_t(0);
  }
}

// mask[i] = (u_i < p_i) for hard, p_i for soft, block by block: check, draw, compare. u is `uniform` when
// given, else Philox keyed by the element index. Returns the index of the first p that is not a
// probability (NaN or outside [0, 1]), or n when all are.
template <typename scalar_t>
int64_t draw_mask(const scalar_t* prob, const opmath_t<scalar_t>* uniform, uint64_t seed, bool hard, scalar_t* out,
                  int64_t n) {
  constexpr int64_t kBlock = 512;  // a multiple of 4: every block starts on a Philox block
  std::atomic<int64_t> first_bad{n};
  // Parallel over whole blocks, so that every block starts on a multiple of 4 (a Philox block). Drawing is
  // compute-bound (ten Philox rounds per four elements), so it pays for threads sooner than the memory-bound
  // loops, but not below tens of thousands of elements: a small gate stays on the calling thread.
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  const int64_t grain_blocks = hard && !uniform ? 32 : kGrainElements / kBlock;
  at::parallel_for(0, blocks, grain_blocks, [&](int64_t first, int64_t last) {
    alignas(64) float drawn[kBlock];
    for (int64_t block = first; block < last; ++block) {
      const int64_t start = block * kBlock;
      const int64_t len = std::min(kBlock, n - start);
      const scalar_t* pb = prob + start;
      if (!all_probabilities(pb, len)) {
        int64_t i = 0;
        while (all_probabilities(pb + i, 1)) ++i;
        int64_t seen = first_bad.load();
        while (start + i < seen && !first_bad.compare_exchange_weak(seen, start + i)) {
        }
        return;
      }
      scalar_t* ob = out + start;
      if (!hard) {
        std::copy(pb, pb + len, ob);
      } else if (uniform) {
        threshold_row(pb, uniform + start, ob, len);
      } else {
        philox_uniform_blocks(seed, 0, static_cast<uint64_t>(start / 4), (len + 3) / 4, drawn);
        threshold_row(pb, drawn, ob, len);
      }
    }
  });
  return first_bad.load();
}

// mask[b, k] in p's dtype: 1 where u < p (hard), or p itself (soft). u comes from `noise` when given,
// else from Philox keyed by the element index b * K + k.
//
// NaN or a value outside [0, 1] would silently become mask 0 (u < NaN is false): the same pass refuses
// it, naming the first offending element. On the CPU this costs no synchronisation and no extra pass.
at::Tensor compute_mask_cpu(const at::Tensor& p, bool hard, const std::optional<at::Tensor>& noise,
                            const std::optional<at::Generator>& generator) {
  const at::Tensor p_c = p.contiguous();
  at::Tensor mask = at::empty_like(p_c);
  const int64_t n = p_c.numel();
  if (n == 0) return mask;
  int64_t bad = n;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "bernoulli_gate_mask_cpu", [&] {
    using acc_t = opmath_t<scalar_t>;
    at::Tensor u;
    if (hard && noise.has_value()) u = noise->contiguous().to(c10::CppTypeToScalarType<acc_t>::value);
    const uint64_t seed = hard && !u.defined() ? draw_seed_cpu(generator) : 0;
    bad = draw_mask(p_c.data_ptr<scalar_t>(), u.defined() ? u.data_ptr<acc_t>() : nullptr, seed, hard,
                    mask.data_ptr<scalar_t>(), n);
  });
  const int64_t K = p_c.size(1);
  TORCH_CHECK_VALUE(bad == n, "bernoulli_gate: p must hold probabilities in [0, 1] (no NaN); p[", bad / K, ", ",
                    bad % K, "] = ", p_c.view(-1)[bad].item<double>());
  return mask;
}

// The hot loops, one row at a time. PICNN_MULTIVERSION compiles each for AVX2 and for the baseline
// (picked when the library loads), since an extension cannot assume the flags torch's own kernels use.

// out = in * m (one scale for the row).
template <typename scalar_t>
PICNN_MULTIVERSION void scale_row(const scalar_t* in, scalar_t* out, int64_t n, opmath_t<scalar_t> m) {
  using acc_t = opmath_t<scalar_t>;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<scalar_t>(static_cast<acc_t>(in[i]) * m);
}

// out = in * m[i] (one scale per element).
template <typename scalar_t>
PICNN_MULTIVERSION void scale_row_elementwise(const scalar_t* in, scalar_t* out, int64_t n,
                                              const opmath_t<scalar_t>* m) {
  using acc_t = opmath_t<scalar_t>;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<scalar_t>(static_cast<acc_t>(in[i]) * m[i]);
}

// out = g * m; returns sum(g * in).
template <typename scalar_t>
PICNN_MULTIVERSION opmath_t<scalar_t> backward_row(const scalar_t* g, const scalar_t* in, scalar_t* out, int64_t n,
                                                   opmath_t<scalar_t> m) {
  using acc_t = opmath_t<scalar_t>;
  acc_t total = 0;
#pragma omp simd reduction(+ : total)
  for (int64_t i = 0; i < n; ++i) {
    const acc_t gi = static_cast<acc_t>(g[i]);
    total += gi * static_cast<acc_t>(in[i]);
    out[i] = static_cast<scalar_t>(gi * m);
  }
  return total;
}

// out = g * m[i]; acc[i] += g * in.
template <typename scalar_t>
PICNN_MULTIVERSION void backward_row_elementwise(const scalar_t* g, const scalar_t* in, scalar_t* out, int64_t n,
                                                 const opmath_t<scalar_t>* m, opmath_t<scalar_t>* acc) {
  using acc_t = opmath_t<scalar_t>;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const acc_t gi = static_cast<acc_t>(g[i]);
    acc[i] += gi * static_cast<acc_t>(in[i]);
    out[i] = static_cast<scalar_t>(gi * m[i]);
  }
}

// Forward, memory (B, K, S): each (b, k) row of S values is scaled by one number.
template <typename scalar_t>
void scale_rows(const scalar_t* x, const opmath_t<scalar_t>* scale, scalar_t* y, int64_t rows, int64_t S) {
  at::parallel_for(0, rows, row_grain(S), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) scale_row(x + row * S, y + row * S, S, scale[row]);
  });
}

// Forward, memory (B, S, K): each (b, s) row of K values is scaled elementwise by scale[b, :].
template <typename scalar_t>
void scale_columns(const scalar_t* x, const opmath_t<scalar_t>* scale, scalar_t* y, int64_t B, int64_t S,
                   int64_t K) {
  at::parallel_for(0, B * S, row_grain(K), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) scale_row_elementwise(x + row * K, y + row * K, K, scale + (row / S) * K);
  });
}

// Backward, memory (B, K, S): grad_x = grad_y * scale[row] and grad_p[row] = sum(grad_y * x), one pass.
template <typename scalar_t>
void backward_rows(const scalar_t* gy, const scalar_t* x, const opmath_t<scalar_t>* scale, scalar_t* gx,
                   opmath_t<scalar_t>* gp, int64_t rows, int64_t S) {
  at::parallel_for(0, rows, row_grain(S), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      gp[row] = backward_row(gy + row * S, x + row * S, gx + row * S, S, scale[row]);
    }
  });
}

// Backward, memory (B, S, K): each task owns one sample and a range of positions, streams through them in
// memory order and sums grad_y * x per channel into its own row of `partial` (B * chunks, K). Ranges are
// split only when there are too few samples to keep every thread busy; the caller then sums the chunks
// (fixed order: deterministic, no atomics).
template <typename scalar_t>
void backward_columns(const scalar_t* gy, const scalar_t* x, const opmath_t<scalar_t>* scale, scalar_t* gx,
                      opmath_t<scalar_t>* partial, int64_t B, int64_t S, int64_t K, int64_t chunks) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t chunk_len = (S + chunks - 1) / chunks;
  // Tasks of at least kGrainElements elements: a (B, K) gradient of a few thousand stays on one thread.
  at::parallel_for(0, B * chunks, row_grain(chunk_len * K), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / chunks;
      acc_t* acc = partial + task * K;
      std::fill(acc, acc + K, acc_t(0));
      const int64_t s_end = std::min(S, (task % chunks + 1) * chunk_len);
      for (int64_t s = (task % chunks) * chunk_len; s < s_end; ++s) {
        const int64_t base = (b * S + s) * K;
        backward_row_elementwise(gy + base, x + base, gx + base, K, scale + b * K, acc);
      }
    }
  });
}

// Chunks of positions per sample for backward_columns: enough tasks for four per thread.
int64_t column_chunks(int64_t B, int64_t S) {
  const int64_t wanted_tasks = 4 * static_cast<int64_t>(at::get_num_threads());
  return std::max<int64_t>(1, std::min(S, (wanted_tasks + B - 1) / std::max<int64_t>(B, 1)));
}

// The (B, K) mask as the contiguous opmath-typed scale the row loops read; the mask itself when it already is
// one (no dispatcher call on the hot path of small gates).
at::Tensor as_opmath(const at::Tensor& mask, at::ScalarType x_dtype) {
  const at::ScalarType acc = opmath_dtype(x_dtype);
  if (mask.scalar_type() == acc && mask.is_contiguous()) return mask;
  return mask.to(acc).contiguous();
}

std::tuple<at::Tensor, at::Tensor> bernoulli_gate_cpu(const at::Tensor& x, const at::Tensor& p, bool hard,
                                                       const std::optional<at::Tensor>& noise,
                                                       std::optional<at::Generator> generator, int64_t channel_dim) {
  const GateLayout layout = check_gate_args(x, p, noise, channel_dim);
  at::Tensor mask = compute_mask_cpu(p, hard, noise, generator);
  const at::Tensor x_c = to_gate_memory(x, layout);
  at::Tensor y = at::empty_like(x_c);
  if (x.numel() == 0) return {y, mask};
  const at::Tensor scale = as_opmath(mask, x.scalar_type());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bernoulli_gate_cpu", [&] {
    const auto* s = scale.data_ptr<opmath_t<scalar_t>>();
    if (layout.channels_innermost) {
      scale_columns(x_c.data_ptr<scalar_t>(), s, y.data_ptr<scalar_t>(), layout.batch, layout.positions,
                    layout.channels);
    } else {
      scale_rows(x_c.data_ptr<scalar_t>(), s, y.data_ptr<scalar_t>(), layout.batch * layout.channels,
                 layout.positions);
    }
  });
  return {y, mask};
}

std::tuple<at::Tensor, at::Tensor> bernoulli_gate_backward_cpu(const at::Tensor& grad_y, const at::Tensor& x,
                                                                const at::Tensor& mask, int64_t channel_dim) {
  const GateLayout layout = check_gate_args(x, mask, std::nullopt, channel_dim, "mask");
  check_grad_like(grad_y, x, "bernoulli_gate_backward", "grad_y", "x");
  const at::Tensor x_c = to_gate_memory(x, layout);
  const at::Tensor gy_c = to_gate_memory(grad_y, layout);
  at::Tensor grad_x = at::empty_like(x_c);
  const at::ScalarType acc_dtype = opmath_dtype(x.scalar_type());
  if (x.numel() == 0) return {grad_x, at::zeros({layout.batch, layout.channels}, mask.options())};
  // Every element of grad_p is written below (a row's sum, or the chunks' sum).
  at::Tensor grad_p = at::empty({layout.batch, layout.channels}, mask.options().dtype(acc_dtype));
  const at::Tensor scale = as_opmath(mask, x.scalar_type());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bernoulli_gate_backward_cpu", [&] {
    using acc_t = opmath_t<scalar_t>;
    const auto* g = gy_c.data_ptr<scalar_t>();
    const auto* in = x_c.data_ptr<scalar_t>();
    const auto* s = scale.data_ptr<acc_t>();
    auto* gx = grad_x.data_ptr<scalar_t>();
    auto* gp = grad_p.data_ptr<acc_t>();
    if (layout.channels_innermost) {
      const int64_t chunks = column_chunks(layout.batch, layout.positions);
      at::Tensor partial = chunks == 1 ? grad_p : at::empty({layout.batch, chunks, layout.channels}, grad_p.options());
      backward_columns(g, in, s, gx, partial.data_ptr<acc_t>(), layout.batch, layout.positions, layout.channels,
                       chunks);
      if (chunks > 1) at::sum_out(grad_p, partial, {1});
    } else {
      backward_rows(g, in, s, gx, gp, layout.batch * layout.channels, layout.positions);
    }
  });
  return {grad_x, grad_p.scalar_type() == mask.scalar_type() ? grad_p : grad_p.to(mask.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(picnn, CPU, m) {
  m.impl("bernoulli_gate", &bernoulli_gate_cpu);
  m.impl("bernoulli_gate_backward", &bernoulli_gate_backward_cpu);
  m.impl("philox_uniform", &philox_uniform_cpu);
}

}  // namespace picnn
