// CPU kernels of bernoulli_gate: the mask draw, the fused forward and the fused straight-through
// backward. Parallel over (sample, channel) rows, one vectorised inner loop per row.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/library.h>

#include "../common/checks.h"
#include "../common/philox.h"
#include "random_cpu.h"
#include "vec_lanes.h"

namespace picnn {
namespace {

// Enough elements per task that a parallel region pays for itself.
constexpr int64_t kGrainElements = 32768;

int64_t row_grain(int64_t row_length) {
  return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(row_length, 1));
}

// NaN or a value outside [0, 1] would silently become mask 0 (u < NaN is false): refuse it. On the CPU
// the check costs one pass over the small (B, K) tensor and no synchronisation.
void check_probabilities_cpu(const at::Tensor& p) {
  const at::Tensor bad = (p < 0) | (p > 1) | p.isnan();
  if (bad.any().item<bool>()) {
    const at::Tensor where = bad.nonzero()[0];
    const int64_t b = where[0].item<int64_t>(), k = where[1].item<int64_t>();
    TORCH_CHECK_VALUE(false, "bernoulli_gate: p must hold probabilities in [0, 1] (no NaN); p[", b, ", ", k,
                      "] = ", p[b][k].item<double>());
  }
}


at::Tensor philox_uniform_cpu(const at::Tensor& like, int64_t seed, int64_t offset) {
  TORCH_CHECK_VALUE(like.dim() == 2, "philox_uniform: like must have shape (B, K), got ", like.sizes());
  at::Tensor u = at::empty(like.sizes(), like.options().dtype(at::kFloat));
  float* out = u.data_ptr<float>();
  at::parallel_for(0, u.numel(), kGrainElements, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      out[i] = philox_uniform(static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), static_cast<uint64_t>(i));
    }
  });
  return u;
}

// mask[b, k] in p's dtype: 1 where u < p (hard), or p itself (soft). u comes from `noise` when given,
// else from Philox keyed by the element index b * K + k.
at::Tensor compute_mask_cpu(const at::Tensor& p, bool hard, const std::optional<at::Tensor>& noise,
                            const std::optional<at::Generator>& generator) {
  check_probabilities_cpu(p);
  if (!hard) return p.clone(at::MemoryFormat::Contiguous);
  const at::Tensor p_c = p.contiguous();
  at::Tensor mask = at::empty_like(p_c);
  const int64_t n = p_c.numel();
  if (n == 0) return mask;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "bernoulli_gate_mask_cpu", [&] {
    using acc_t = opmath_t<scalar_t>;
    const scalar_t* prob = p_c.data_ptr<scalar_t>();
    scalar_t* out = mask.data_ptr<scalar_t>();
    if (noise.has_value()) {
      const at::Tensor u = noise->contiguous().to(c10::CppTypeToScalarType<acc_t>::value);
      const acc_t* uniform = u.data_ptr<acc_t>();
      at::parallel_for(0, n, kGrainElements, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) out[i] = uniform[i] < static_cast<acc_t>(prob[i]) ? 1 : 0;
      });
    } else {
      const uint64_t seed = draw_seed_cpu(generator);
      at::parallel_for(0, n, kGrainElements, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          const acc_t u = philox_uniform(seed, 0, static_cast<uint64_t>(i));
          out[i] = u < static_cast<acc_t>(prob[i]) ? 1 : 0;
        }
      });
    }
  });
  return mask;
}

// y = x * scale[b, k]; memory (B, K, S): each (b, k) row of S values is scaled by one number.
template <typename scalar_t>
void scale_rows(const scalar_t* x, const opmath_t<scalar_t>* scale, scalar_t* y, int64_t rows, int64_t S) {
  using L = VecLanes<scalar_t>;
  at::parallel_for(0, rows, row_grain(S), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const scalar_t* in = x + row * S;
      scalar_t* out = y + row * S;
      const opmath_t<scalar_t> m = scale[row];
      const typename L::Vec mv(m);
      int64_t s = 0;
      for (; s + L::kStep <= S; s += L::kStep) {
        auto v = L::load(in + s);
        for (auto& part : v) part = part * mv;
        L::store(out + s, v);
      }
      for (; s < S; ++s) out[s] = static_cast<scalar_t>(static_cast<opmath_t<scalar_t>>(in[s]) * m);
    }
  });
}

// y = x * scale[b, :]; memory (B, S, K): each (b, s) row of K values is scaled elementwise.
template <typename scalar_t>
void scale_columns(const scalar_t* x, const opmath_t<scalar_t>* scale, scalar_t* y, int64_t B, int64_t S,
                   int64_t K) {
  using L = VecLanes<scalar_t>;
  at::parallel_for(0, B * S, row_grain(K), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const scalar_t* in = x + row * K;
      scalar_t* out = y + row * K;
      const opmath_t<scalar_t>* m = scale + (row / S) * K;
      int64_t k = 0;
      for (; k + L::kStep <= K; k += L::kStep) {
        auto v = L::load(in + k);
        const auto mv = L::load_opmath(m + k);
        for (int j = 0; j < L::kParts; ++j) v[j] = v[j] * mv[j];
        L::store(out + k, v);
      }
      for (; k < K; ++k) out[k] = static_cast<scalar_t>(static_cast<opmath_t<scalar_t>>(in[k]) * m[k]);
    }
  });
}

// Backward, memory (B, K, S): grad_x = grad_y * scale[row] and grad_p[row] = sum(grad_y * x), one pass.
template <typename scalar_t>
void backward_rows(const scalar_t* gy, const scalar_t* x, const opmath_t<scalar_t>* scale, scalar_t* gx,
                   opmath_t<scalar_t>* gp, int64_t rows, int64_t S) {
  using L = VecLanes<scalar_t>;
  using acc_t = opmath_t<scalar_t>;
  at::parallel_for(0, rows, row_grain(S), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const scalar_t* g = gy + row * S;
      const scalar_t* in = x + row * S;
      scalar_t* out = gx + row * S;
      const acc_t m = scale[row];
      const typename L::Vec mv(m);
      typename L::Parts acc;
      acc.fill(typename L::Vec(acc_t(0)));
      int64_t s = 0;
      for (; s + L::kStep <= S; s += L::kStep) {
        auto gv = L::load(g + s);
        const auto xv = L::load(in + s);
        for (int j = 0; j < L::kParts; ++j) {
          acc[j] = at::vec::fmadd(gv[j], xv[j], acc[j]);
          gv[j] = gv[j] * mv;
        }
        L::store(out + s, gv);
      }
      acc_t total = 0;
      for (int j = 0; j < L::kParts; ++j) {
        total += at::vec::vec_reduce_all<acc_t>([](auto a, auto b) { return a + b; }, acc[j]);
      }
      for (; s < S; ++s) {
        const acc_t gs = static_cast<acc_t>(g[s]);
        total += gs * static_cast<acc_t>(in[s]);
        out[s] = static_cast<scalar_t>(gs * m);
      }
      gp[row] = total;
    }
  });
}

// Backward, memory (B, S, K): each task owns one sample and a block of channels, walks the S positions
// and keeps the block's partial sums in a small local array (no atomics, deterministic).
template <typename scalar_t>
void backward_columns(const scalar_t* gy, const scalar_t* x, const opmath_t<scalar_t>* scale, scalar_t* gx,
                      opmath_t<scalar_t>* gp, int64_t B, int64_t S, int64_t K) {
  using L = VecLanes<scalar_t>;
  using acc_t = opmath_t<scalar_t>;
  constexpr int64_t kBlock = 256;  // channels per task: 1 KiB of float accumulators, stays in L1
  const int64_t blocks = (K + kBlock - 1) / kBlock;
  at::parallel_for(0, B * blocks, std::max<int64_t>(1, kGrainElements / std::max<int64_t>(S * kBlock, 1)),
                   [&](int64_t begin, int64_t end) {
    acc_t acc[kBlock];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / blocks;
      const int64_t k0 = (task % blocks) * kBlock;
      const int64_t width = std::min(kBlock, K - k0);
      const acc_t* m = scale + b * K + k0;
      std::fill(acc, acc + width, acc_t(0));
      for (int64_t s = 0; s < S; ++s) {
        const int64_t base = (b * S + s) * K + k0;
        int64_t k = 0;
        for (; k + L::kStep <= width; k += L::kStep) {
          auto gv = L::load(gy + base + k);
          const auto xv = L::load(x + base + k);
          const auto mv = L::load_opmath(m + k);
          auto av = L::load_opmath(acc + k);
          for (int j = 0; j < L::kParts; ++j) {
            av[j] = at::vec::fmadd(gv[j], xv[j], av[j]);
            gv[j] = gv[j] * mv[j];
          }
          for (int j = 0; j < L::kParts; ++j) av[j].store(acc + k + j * L::Vec::size());
          L::store(gx + base + k, gv);
        }
        for (; k < width; ++k) {
          const acc_t g = static_cast<acc_t>(gy[base + k]);
          acc[k] += g * static_cast<acc_t>(x[base + k]);
          gx[base + k] = static_cast<scalar_t>(g * m[k]);
        }
      }
      std::copy(acc, acc + width, gp + b * K + k0);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> bernoulli_gate_cpu(const at::Tensor& x, const at::Tensor& p, bool hard,
                                                       const std::optional<at::Tensor>& noise,
                                                       std::optional<at::Generator> generator, int64_t channel_dim) {
  const GateLayout layout = check_gate_args(x, p, noise, channel_dim);
  at::Tensor mask = compute_mask_cpu(p, hard, noise, generator);
  const at::Tensor x_c = to_gate_memory(x, layout);
  at::Tensor y = at::empty_like(x_c);
  if (x.numel() == 0) return {y, mask};
  const at::Tensor scale = mask.to(opmath_dtype(x.scalar_type())).contiguous();
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
  at::Tensor grad_p = at::zeros({layout.batch, layout.channels}, mask.options().dtype(acc_dtype));
  if (x.numel() == 0) return {grad_x, grad_p.to(mask.scalar_type())};
  const at::Tensor scale = mask.to(acc_dtype).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bernoulli_gate_backward_cpu", [&] {
    using acc_t = opmath_t<scalar_t>;
    const auto* g = gy_c.data_ptr<scalar_t>();
    const auto* in = x_c.data_ptr<scalar_t>();
    const auto* s = scale.data_ptr<acc_t>();
    auto* gx = grad_x.data_ptr<scalar_t>();
    auto* gp = grad_p.data_ptr<acc_t>();
    if (layout.channels_innermost) {
      backward_columns(g, in, s, gx, gp, layout.batch, layout.positions, layout.channels);
    } else {
      backward_rows(g, in, s, gx, gp, layout.batch * layout.channels, layout.positions);
    }
  });
  return {grad_x, grad_p.to(mask.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(picnn, CPU, m) {
  m.impl("bernoulli_gate", &bernoulli_gate_cpu);
  m.impl("bernoulli_gate_backward", &bernoulli_gate_backward_cpu);
  m.impl("philox_uniform", &philox_uniform_cpu);
}

}  // namespace picnn
