// CPU kernels of sample_class: one categorical draw per row of softmax(logits), returned as an exact
// one-hot, and the softmax backward of its straight-through gradient. Parallel over rows.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "../common/checks.h"
#include "../common/philox.h"
#include "random_cpu.h"

namespace picnn {
namespace {

template <typename scalar_t>
using opmath_t = at::opmath_type<scalar_t>;

constexpr int64_t kGrainElements = 32768;


// Inverse-CDF draw on the unnormalised weights e_j = exp(l_j - max): the first j whose running sum
// exceeds u * total. A class of weight 0 is never chosen; if rounding leaves u * total at the total,
// the last class of positive weight is.
template <typename scalar_t>
int64_t draw_row(const scalar_t* logits, int64_t C, opmath_t<scalar_t> u, int64_t row) {
  using acc_t = opmath_t<scalar_t>;
  acc_t max_logit = -std::numeric_limits<acc_t>::infinity();
  for (int64_t j = 0; j < C; ++j) {
    const acc_t l = static_cast<acc_t>(logits[j]);
    TORCH_CHECK_VALUE(!std::isnan(l), "sample_class: logits must not be NaN; logits[", row, ", ", j, "] is NaN");
    max_logit = std::max(max_logit, l);
  }
  TORCH_CHECK_VALUE(std::isfinite(max_logit), "sample_class: each row of logits needs a finite maximum; row ",
                    row, " has maximum ", max_logit);
  acc_t total = 0;
  for (int64_t j = 0; j < C; ++j) total += std::exp(static_cast<acc_t>(logits[j]) - max_logit);
  const acc_t target = u * total;
  acc_t running = 0;
  int64_t last_positive = 0;
  for (int64_t j = 0; j < C; ++j) {
    const acc_t e = std::exp(static_cast<acc_t>(logits[j]) - max_logit);
    running += e;
    if (e > 0) {
      if (running > target) return j;
      last_positive = j;
    }
  }
  return last_positive;
}

std::tuple<at::Tensor, at::Tensor> sample_class_cpu(const at::Tensor& logits, const std::optional<at::Tensor>& noise,
                                                    std::optional<at::Generator> generator) {
  check_sample_class_args(logits, noise);
  const at::Tensor l = logits.contiguous();
  const int64_t B = l.size(0), C = l.size(1);
  at::Tensor onehot = at::zeros_like(l);
  at::Tensor index = at::empty({B}, l.options().dtype(at::kLong));
  if (B == 0) return {onehot, index};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, l.scalar_type(), "sample_class_cpu", [&] {
    using acc_t = opmath_t<scalar_t>;
    at::Tensor u_tensor;
    uint64_t seed = 0;
    if (noise.has_value()) {
      u_tensor = noise->contiguous().to(c10::CppTypeToScalarType<acc_t>::value);
    } else {
      seed = draw_seed_cpu(generator);
    }
    const acc_t* u = noise.has_value() ? u_tensor.data_ptr<acc_t>() : nullptr;
    const scalar_t* in = l.data_ptr<scalar_t>();
    scalar_t* out = onehot.data_ptr<scalar_t>();
    int64_t* idx = index.data_ptr<int64_t>();
    at::parallel_for(0, B, std::max<int64_t>(1, kGrainElements / C), [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const acc_t ub = u ? u[b] : static_cast<acc_t>(philox_uniform(seed, 0, static_cast<uint64_t>(b)));
        const int64_t c = draw_row(in + b * C, C, ub, b);
        idx[b] = c;
        out[b * C + c] = scalar_t(1);
      }
    });
  });
  return {onehot, index};
}

// grad_logits = pi * (g - sum_j pi_j g_j), with pi recomputed from the logits (cheaper than saving it).
at::Tensor sample_class_backward_cpu(const at::Tensor& grad_onehot, const at::Tensor& logits) {
  check_sample_class_backward_args(grad_onehot, logits);
  const at::Tensor l = logits.contiguous();
  const at::Tensor g = grad_onehot.contiguous();
  at::Tensor grad = at::empty_like(l);
  const int64_t B = l.size(0), C = l.size(1);
  if (l.numel() == 0) return grad;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, l.scalar_type(), "sample_class_backward_cpu", [&] {
    using acc_t = opmath_t<scalar_t>;
    const scalar_t* in = l.data_ptr<scalar_t>();
    const scalar_t* go = g.data_ptr<scalar_t>();
    scalar_t* out = grad.data_ptr<scalar_t>();
    at::parallel_for(0, B, std::max<int64_t>(1, kGrainElements / C), [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const scalar_t* row = in + b * C;
        acc_t max_logit = -std::numeric_limits<acc_t>::infinity();
        for (int64_t j = 0; j < C; ++j) max_logit = std::max(max_logit, static_cast<acc_t>(row[j]));
        acc_t total = 0, weighted = 0;
        for (int64_t j = 0; j < C; ++j) {
          const acc_t e = std::exp(static_cast<acc_t>(row[j]) - max_logit);
          total += e;
          weighted += e * static_cast<acc_t>(go[b * C + j]);
        }
        const acc_t mean_grad = weighted / total;  // sum_j pi_j g_j
        for (int64_t j = 0; j < C; ++j) {
          const acc_t pi = std::exp(static_cast<acc_t>(row[j]) - max_logit) / total;
          out[b * C + j] = static_cast<scalar_t>(pi * (static_cast<acc_t>(go[b * C + j]) - mean_grad));
        }
      }
    });
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(picnn, CPU, m) {
  m.impl("sample_class", &sample_class_cpu);
  m.impl("sample_class_backward", &sample_class_backward_cpu);
}

}  // namespace picnn
