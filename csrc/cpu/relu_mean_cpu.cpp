// The activation of NND's skipping path with the next controller's pooling in the same pass
// (DESIGN.md section 5):
//   x <- relu(x + residual)   (in place; residual optional),   u[b, c] = mean over positions of the new x.
// Why one op: the controller of the next gated layer needs u = GAP(its input), and on the skipping path it
// ran as its own pass over a map that the convs in between had evicted from the caches (a 256x56x56 map is
// 3 MB; at ResNet-50, batch 1 the 33 controllers' means were a third of their cost). The ReLU (and the
// residual sum of a block) pass over the map anyway, so the sums ride along while the values are in
// registers. Inference only: no autograd kernel; picnn_ext.ops.relu_mean_ takes the composition of torch ops
// when a gradient is wanted. float32 and float64; x contiguous or channels_last (any other layout through
// the composition of ATen ops, which is what it replaces).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "../common/checks.h"
#include "lane_sum.h"
#include "multiversion.h"

namespace picnn {
namespace {

// ATen's elementwise ops split a map over the threads from 32K elements (at::internal::GRAIN_SIZE): the same
// grain here, so that the plain network, which runs this op too, loses nothing against torch.relu_.
constexpr int64_t kGrainElements = at::internal::GRAIN_SIZE;

// Over `rows` rows of n: x[i] = max(x[i] + r[i], 0), and each row's mean into means[row] (r may be null).
// The row loop is inside the call: a 7x7 map is rows of 49, where a call per row would cost as much as the row.
// Compiled for AVX2 and the baseline (multiversion.h says why).
template <typename scalar_t>
PICNN_MULTIVERSION void relu_rows(scalar_t* x, const scalar_t* r, scalar_t* means, int64_t rows, int64_t n,
                                  scalar_t inv_n) {
  for (int64_t row = 0; row < rows; ++row, x += n) {
    scalar_t sum;
    if (r == nullptr) {
      sum = lane_sum<scalar_t>(n, [x](int64_t i) {
        const scalar_t v = x[i] > scalar_t(0) ? x[i] : scalar_t(0);
        x[i] = v;
        return v;
      });
    } else {
      sum = lane_sum<scalar_t>(n, [x, r](int64_t i) {
        const scalar_t t = x[i] + r[i];
        const scalar_t v = t > scalar_t(0) ? t : scalar_t(0);
        x[i] = v;
        return v;
      });
      r += n;
    }
    means[row] = sum * inv_n;
  }
}

// The same for channels_last positions, (positions, n) rows: x[s, c] = max(x[s, c] + r[s, c], 0),
// acc[c] += x[s, c]; both loops in one call, so that few channels pay no call per position, and four positions
// a step, so that acc is loaded and stored once per four rows (one row a step made this 3x torch.relu_'s time
// on a ResNet-50's channels_last maps with 2 threads).
template <typename scalar_t>
PICNN_MULTIVERSION void relu_accumulate(scalar_t* x, const scalar_t* r, scalar_t* acc, int64_t positions,
                                        int64_t n) {
  const auto relu = [](scalar_t v) { return v > scalar_t(0) ? v : scalar_t(0); };
  int64_t s = 0;
  for (; s + 4 <= positions; s += 4, x += 4 * n) {
    scalar_t *x0 = x, *x1 = x + n, *x2 = x + 2 * n, *x3 = x + 3 * n;
    if (r == nullptr) {
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        const scalar_t v0 = relu(x0[i]), v1 = relu(x1[i]), v2 = relu(x2[i]), v3 = relu(x3[i]);
        x0[i] = v0;
        x1[i] = v1;
        x2[i] = v2;
        x3[i] = v3;
        acc[i] += (v0 + v1) + (v2 + v3);
      }
    } else {
      const scalar_t *r0 = r, *r1 = r + n, *r2 = r + 2 * n, *r3 = r + 3 * n;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        const scalar_t v0 = relu(x0[i] + r0[i]), v1 = relu(x1[i] + r1[i]), v2 = relu(x2[i] + r2[i]),
                       v3 = relu(x3[i] + r3[i]);
        x0[i] = v0;
        x1[i] = v1;
        x2[i] = v2;
        x3[i] = v3;
        acc[i] += (v0 + v1) + (v2 + v3);
      }
      r += 4 * n;
    }
  }
  for (; s < positions; ++s, x += n) {
    if (r == nullptr) {
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        const scalar_t v = relu(x[i]);
        x[i] = v;
        acc[i] += v;
      }
    } else {
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        const scalar_t v = relu(x[i] + r[i]);
        x[i] = v;
        acc[i] += v;
      }
      r += n;
    }
  }
}

void check_relu_mean_args(const at::Tensor& x, const std::optional<at::Tensor>& residual) {
  constexpr const char* op = "relu_mean_";
  TORCH_CHECK_VALUE(x.dim() >= 3, op, ": x must be (B, C, *spatial) with at least one spatial dim, got shape ",
                    x.sizes());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
                   ": x must be float32 or float64 for the compiled kernel, got ", x.scalar_type());
  if (residual.has_value()) {
    check_same_device(*residual, x, op, "residual", "x");
    TORCH_CHECK_TYPE(residual->scalar_type() == x.scalar_type(), op, ": residual must have x's dtype (",
                     x.scalar_type(), "), got ", residual->scalar_type());
    TORCH_CHECK_VALUE(residual->sizes() == x.sizes(), op, ": residual must have x's shape ", x.sizes(), ", got ",
                      residual->sizes());
  }
}

at::Tensor relu_mean_cpu(at::Tensor& x, const std::optional<at::Tensor>& residual_in) {
  check_relu_mean_args(x, residual_in);
  const int64_t batch = x.size(0), channels = x.size(1);
  const int64_t positions = batch == 0 || channels == 0 ? 0 : x.numel() / (batch * channels);
  const bool channels_innermost = x.dim() == 4 && !x.is_contiguous() &&
                                  x.is_contiguous(at::MemoryFormat::ChannelsLast);
  if (!x.is_contiguous() && !channels_innermost) {  // any other layout: the composition, in place
    if (residual_in.has_value()) x.add_(*residual_in);
    x.relu_();
    std::vector<int64_t> dims;
    for (int64_t d = 2; d < x.dim(); ++d) dims.push_back(d);
    return x.mean(dims);
  }
  // The residual is read in x's layout.
  const at::MemoryFormat format = channels_innermost ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  std::optional<at::Tensor> residual;
  if (residual_in.has_value()) residual = residual_in->contiguous(format);
  at::Tensor means = at::zeros({batch, channels}, x.options().memory_format(at::MemoryFormat::Contiguous));
  if (x.numel() == 0) return means;

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "relu_mean_cpu", [&] {
    scalar_t* xp = x.mutable_data_ptr<scalar_t>();
    const scalar_t* rp = residual.has_value() ? residual->const_data_ptr<scalar_t>() : nullptr;
    scalar_t* mp = means.mutable_data_ptr<scalar_t>();
    const scalar_t inv_positions = scalar_t(1) / static_cast<scalar_t>(positions);
    if (!channels_innermost) {  // (B*C rows, S): one row's sum per task, rows split over the threads
      const int64_t grain = std::max<int64_t>(1, kGrainElements / positions);
      at::parallel_for(0, batch * channels, grain, [&](int64_t begin, int64_t end) {
        const int64_t offset = begin * positions;
        relu_rows(xp + offset, rp == nullptr ? nullptr : rp + offset, mp + begin, end - begin, positions,
                  inv_positions);
      });
      return;
    }
    // (B, S, C): positions split over the threads, each thread adding into its own (B, C) partial sums.
    const int64_t grain = std::max<int64_t>(1, kGrainElements / channels);
    // [begin, end) of the B*S positions may span samples: one call per sample's part of it.
    const auto relu_positions = [&](scalar_t* acc, int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end;) {
        const int64_t b = i / positions, stop = std::min(end, (b + 1) * positions);
        const int64_t offset = i * channels;
        relu_accumulate(xp + offset, rp == nullptr ? nullptr : rp + offset, acc + b * channels, stop - i, channels);
        i = stop;
      }
    };
    const int64_t threads = at::get_num_threads();
    if (threads == 1 || batch * positions <= grain || at::in_parallel_region()) {  // one task: no partials
      relu_positions(mp, 0, batch * positions);
      for (int64_t i = 0; i < batch * channels; ++i) mp[i] *= inv_positions;
      return;
    }
    std::vector<scalar_t> partial(static_cast<size_t>(threads) * batch * channels, scalar_t(0));
    at::parallel_for(0, batch * positions, grain, [&](int64_t begin, int64_t end) {
      relu_positions(partial.data() + static_cast<int64_t>(at::get_thread_num()) * batch * channels, begin, end);
    });
    for (int64_t t = 0; t < threads; ++t) {
      const scalar_t* acc = partial.data() + t * batch * channels;
      for (int64_t i = 0; i < batch * channels; ++i) mp[i] += acc[i];
    }
    for (int64_t i = 0; i < batch * channels; ++i) mp[i] *= inv_positions;
  });
  return means;
}

}  // namespace

TORCH_LIBRARY_IMPL(picnn, CPU, m) { m.impl("relu_mean_", &relu_mean_cpu); }

}  // namespace picnn
