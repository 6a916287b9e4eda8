// NND's architecture controller at inference, fused (DESIGN.md section 5), and the same with the gate pattern the
// skipping path reads (controller_gates):
//   z = W2 relu(W1 mean_positions(x) + b1) + b2,  x (B, C, *S), W1 (H, C), b1 (H), W2 (K, H), b2 (K).
// x may be (B, C), the pooled input u itself, when the activation that wrote the map computed its means
// (relu_mean_cpu.cpp).
// One call instead of the four ops of the composition (mean, linear, relu, linear): on the skipping path the
// controller runs between two convs, where each op pays 10-20 us of cold dispatch and cache misses, which
// at batch 1 is several percent of a ResNet's time (benchmarks/nnd_speed.py). Inference only: there is no
// autograd kernel, and picnn_ext.ops.controller_logits takes the differentiable composition when a gradient
// is wanted. float32 and float64; x contiguous or channels_last (any other layout is made contiguous).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "../common/checks.h"
#include "lane_sum.h"
#include "multiversion.h"

namespace picnn {
namespace {

// The loops, compiled for AVX2 and the baseline (multiversion.h says why: at::vec::Vectorized in an
// extension built without -mavx2 is its scalar emulation, slower than the composition it replaces); each
// holds its row loop, since rows of 1 (a pooled input) or 49 (a 7x7 map) would otherwise cost a call each,
// and sums in independent lanes (lane_sum.h says why).

// means[r] = mean of row r, over `rows` rows of n.
template <typename scalar_t>
PICNN_MULTIVERSION void row_means(scalar_t* means, const scalar_t* x, int64_t rows, int64_t n, scalar_t inv_n) {
  if (n == 1) {  // the pooled input itself
    for (int64_t r = 0; r < rows; ++r) means[r] = x[r];
    return;
  }
  for (int64_t r = 0; r < rows; ++r, x += n) {
    means[r] = lane_sum<scalar_t>(n, [x](int64_t i) { return x[i]; }) * inv_n;
  }
}

// out[b * out_stride + j] = w_j . in_b + bias[j] (with a ReLU if relu) for the rows j in [begin, end) of w
// (cols wide) and every sample b: a row of the weight is read once for all samples.
template <typename scalar_t>
PICNN_MULTIVERSION void linear_rows(scalar_t* out, const scalar_t* w, const scalar_t* bias, const scalar_t* in,
                                    int64_t batch, int64_t cols, int64_t out_stride, int64_t begin, int64_t end,
                                    bool relu) {
  for (int64_t j = begin; j < end; ++j) {
    const scalar_t* row = w + j * cols;
    for (int64_t b = 0; b < batch; ++b) {
      const scalar_t* sample = in + b * cols;
      scalar_t value = lane_sum<scalar_t>(cols, [row, sample](int64_t i) { return row[i] * sample[i]; }) + bias[j];
      out[b * out_stride + j] = relu && value < scalar_t(0) ? scalar_t(0) : value;
    }
  }
}

// acc[c] += x[s, c] over a channels_last (positions, channels) block. Few channels (an RGB image: 3) would make
// a loop over c of 3, not a vector: the block is then read flat, in chunks of L = C * m >= kFlatLanes elements
// that add into L lanes (lane j is channel j % C), folded into acc at the end (a 3x224x224 image by positions
// took about 13x the time of the same image's channels-first rows, in a one-off timing). Many channels go by
// positions, four at a time, so that each lane of acc is loaded and stored once per four rows.
template <typename scalar_t>
PICNN_MULTIVERSION void add_positions(scalar_t* acc, const scalar_t* x, int64_t positions, int64_t channels) {
  constexpr int64_t kFlatLanes = 64;
  if (channels < kFlatLanes / 4) {
    const int64_t per_chunk = (kFlatLanes + channels - 1) / channels;  // positions in a chunk
    const int64_t lanes_used = per_chunk * channels;                   // < kFlatLanes + channels <= 80
    scalar_t lanes[kFlatLanes + kFlatLanes / 4] = {};
    int64_t s = 0;
    for (; s + per_chunk <= positions; s += per_chunk) {
      const scalar_t* chunk = x + s * channels;
#pragma omp simd
      for (int64_t j = 0; j < lanes_used; ++j) lanes[j] += chunk[j];
    }
    for (int64_t j = 0; j < lanes_used; ++j) acc[j % channels] += lanes[j];
    for (; s < positions; ++s) {
      for (int64_t c = 0; c < channels; ++c) acc[c] += x[s * channels + c];
    }
    return;
  }
  int64_t s = 0;
  for (; s + 4 <= positions; s += 4) {
    const scalar_t *r0 = x + s * channels, *r1 = r0 + channels, *r2 = r1 + channels, *r3 = r2 + channels;
#pragma omp simd
    for (int64_t c = 0; c < channels; ++c) acc[c] += (r0[c] + r1[c]) + (r2[c] + r3[c]);
  }
  for (; s < positions; ++s) {
    const scalar_t* row = x + s * channels;
#pragma omp simd
    for (int64_t c = 0; c < channels; ++c) acc[c] += row[c];
  }
}

void check_controller_args(const char* op, const at::Tensor& x, const at::Tensor& weight1, const at::Tensor& bias1,
                           const at::Tensor& weight2, const at::Tensor& bias2) {
  TORCH_CHECK_VALUE(x.dim() >= 2, op, ": x must be (B, C, *spatial), or (B, C) already pooled, got shape ",
                    x.sizes());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
                   ": x must be float32 or float64 for the compiled kernel, got ", x.scalar_type());
  const at::Tensor* params[] = {&weight1, &bias1, &weight2, &bias2};
  const char* names[] = {"weight1", "bias1", "weight2", "bias2"};
  for (int i = 0; i < 4; ++i) {
    check_same_device(*params[i], x, op, names[i], "x");
    TORCH_CHECK_TYPE(params[i]->scalar_type() == x.scalar_type(), op, ": ", names[i], " must have x's dtype (",
                     x.scalar_type(), "), got ", params[i]->scalar_type());
  }
  const int64_t channels = x.size(1);
  TORCH_CHECK_VALUE(weight1.dim() == 2 && weight1.size(1) == channels, op,
                    ": weight1 must be (hidden, C) with C = x.size(1) = ", channels, ", got shape ", weight1.sizes());
  const int64_t hidden = weight1.size(0);
  TORCH_CHECK_VALUE(bias1.dim() == 1 && bias1.size(0) == hidden, op, ": bias1 must be (hidden,) = (", hidden,
                    ",), got shape ", bias1.sizes());
  TORCH_CHECK_VALUE(weight2.dim() == 2 && weight2.size(1) == hidden, op,
                    ": weight2 must be (K, hidden) with hidden = weight1.size(0) = ", hidden, ", got shape ",
                    weight2.sizes());
  TORCH_CHECK_VALUE(bias2.dim() == 1 && bias2.size(0) == weight2.size(0), op, ": bias2 must be (K,) = (",
                    weight2.size(0), ",), got shape ", bias2.sizes());
}

at::Tensor logits(const char* op, const at::Tensor& x_in, const at::Tensor& weight1_in, const at::Tensor& bias1_in,
                  const at::Tensor& weight2_in, const at::Tensor& bias2_in) {
  check_controller_args(op, x_in, weight1_in, bias1_in, weight2_in, bias2_in);
  const int64_t batch = x_in.size(0), channels = x_in.size(1);
  const int64_t positions = channels == 0 || batch == 0 ? 0 : x_in.numel() / (batch * channels);
  // channels_last 4-D maps are read as (B, S, C) rows; everything else as (B, C, S).
  const bool channels_innermost = x_in.dim() == 4 && !x_in.is_contiguous() &&
                                  x_in.is_contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor x = channels_innermost ? x_in : x_in.contiguous();
  const at::Tensor weight1 = weight1_in.contiguous(), bias1 = bias1_in.contiguous();
  const at::Tensor weight2 = weight2_in.contiguous(), bias2 = bias2_in.contiguous();
  const int64_t hidden = weight1.size(0), filters = weight2.size(0);
  at::Tensor z = at::empty({batch, filters}, x.options().memory_format(at::MemoryFormat::Contiguous));
  if (batch == 0 || filters == 0) return z;

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "controller_logits_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* w1 = weight1.const_data_ptr<scalar_t>();
    const scalar_t* b1 = bias1.const_data_ptr<scalar_t>();
    const scalar_t* w2 = weight2.const_data_ptr<scalar_t>();
    const scalar_t* b2 = bias2.const_data_ptr<scalar_t>();
    scalar_t* zp = z.mutable_data_ptr<scalar_t>();
    const scalar_t inv_positions = positions > 0 ? scalar_t(1) / static_cast<scalar_t>(positions) : scalar_t(0);
    // u = the means, (B, C). A batch-1 map of 256 x 56 x 56 is a 3 MB read, a memory pass that is most of
    // the means' time: for maps that large the rows are split over the threads (the convs around use them
    // all); smaller maps stay on the calling thread, where waking another costs more than it saves.
    constexpr int64_t kParallelMeans = 1 << 18;  // measured best of 2^14, 2^16, 2^18 at ResNet-50, 2 threads
    std::vector<scalar_t> u(batch * channels, scalar_t(0));
    if (channels_innermost) {  // (B, S, C): add the positions' rows, element by element, a sample a task
      at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b) {
          scalar_t* ub = u.data() + b * channels;
          const scalar_t* sample = xp + b * channels * positions;
          add_positions(ub, sample, positions, channels);
          for (int64_t c = 0; c < channels; ++c) ub[c] *= inv_positions;
        }
      });
    } else {  // (B*C rows, S): one contiguous row per (sample, channel)
      const int64_t rows = batch * channels;
      const int64_t grain = rows * positions >= kParallelMeans
                                ? std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(positions, 1))
                                : std::max<int64_t>(rows, 1);
      at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
        row_means(u.data() + begin, xp + begin * positions, end - begin, positions, inv_positions);
      });
    }
    // The two Linears, a weight row a task and every sample against it, so that each row is read once per
    // call. The weights are the controller's real cost at inference (ResNet-50's 33 controllers hold 8 MB,
    // read cold between two convs): when a layer's are large they are split over the threads, as the convs
    // around are; small ones stay on the calling thread.
    constexpr int64_t kParallelWeights = 1 << 15;  // elements of a weight matrix: 128 KB in float32
    auto grain_of = [](int64_t rows, int64_t cols) {
      return rows * cols >= kParallelWeights ? std::max<int64_t>(1, (kParallelWeights / 4) / std::max<int64_t>(cols, 1))
                                             : std::max<int64_t>(rows, 1);
    };
    std::vector<scalar_t> h(batch * hidden);
    at::parallel_for(0, hidden, grain_of(hidden, channels), [&](int64_t begin, int64_t end) {
      linear_rows(h.data(), w1, b1, u.data(), batch, channels, hidden, begin, end, /*relu=*/true);
    });
    at::parallel_for(0, filters, grain_of(filters, hidden), [&](int64_t begin, int64_t end) {
      linear_rows(zp, w2, b2, h.data(), batch, hidden, filters, begin, end, /*relu=*/false);
    });
  });
  return z;
}

at::Tensor controller_logits_cpu(const at::Tensor& x, const at::Tensor& weight1, const at::Tensor& bias1,
                                 const at::Tensor& weight2, const at::Tensor& bias2) {
  return logits("controller_logits", x, weight1, bias1, weight2, bias2);
}

// z, and what the skipping path reads of it on the host: open[k] = 1 where some sample's z > 0 (the filters
// to compute, a K-byte pattern that is the caches' key as it stands), and mixed = whether some sample closes
// a filter that another opens (then the computed map is multiplied by the gate). Counted here, in the pass
// that wrote z, rather than by numpy on the host: between two convs each numpy call runs from cold caches.
std::tuple<at::Tensor, at::Tensor, at::Tensor> controller_gates_cpu(const at::Tensor& x, const at::Tensor& weight1,
                                                                    const at::Tensor& bias1, const at::Tensor& weight2,
                                                                    const at::Tensor& bias2) {
  at::Tensor z = logits("controller_gates", x, weight1, bias1, weight2, bias2);
  const int64_t batch = z.size(0), filters = z.size(1);
  at::Tensor open = at::empty({filters}, z.options().dtype(at::kByte));
  at::Tensor mixed = at::empty({}, z.options().dtype(at::kBool));
  bool any_mixed = false;
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "controller_gates_cpu", [&] {
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    uint8_t* open_p = open.mutable_data_ptr<uint8_t>();
    for (int64_t k = 0; k < filters; ++k) {
      int64_t opened = 0;
      for (int64_t b = 0; b < batch; ++b) opened += zp[b * filters + k] > scalar_t(0);
      open_p[k] = opened > 0;
      any_mixed = any_mixed || (opened > 0 && opened < batch);
    }
  });
  *mixed.mutable_data_ptr<bool>() = any_mixed;
  return {z, open, mixed};
}

}  // namespace

TORCH_LIBRARY_IMPL(picnn, CPU, m) {
  m.impl("controller_logits", &controller_logits_cpu);
  m.impl("controller_gates", &controller_gates_cpu);
}

}  // namespace picnn
