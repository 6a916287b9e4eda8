// Argument checks shared by the CPU and CUDA kernels. Every message names the argument and says what
// was expected, and every check runs before anything is allocated or written.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>

namespace picnn {

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

inline void check_float_tensor(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_TYPE(is_supported_float(t.scalar_type()), op, ": ", name,
                   " must be a floating-point tensor (float32, float64, float16 or bfloat16), got ",
                   t.scalar_type());
}

inline void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* op,
                              const char* name, const char* ref_name) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ",
                    ref_name, " is on ", ref.device(), "; both must be on the same device");
}

// How the gate walks its input: B samples, K channels, S positions per (sample, channel), and whether
// the channel is the fastest-moving dimension in memory ((B, S, K) rather than (B, K, S)).
struct GateLayout {
  int64_t batch = 0;
  int64_t channels = 0;
  int64_t positions = 0;
  bool channels_innermost = false;
  at::MemoryFormat memory_format = at::MemoryFormat::Contiguous;
};

// channel_dim is 1 (B, K, *S) or the last dim (B, *S, K); returns it as a non-negative index.
inline int64_t normalize_channel_dim(const at::Tensor& x, int64_t channel_dim) {
  const int64_t ndim = x.dim();
  TORCH_CHECK_VALUE(ndim >= 2, "bernoulli_gate: x must have at least 2 dims, (B, K, ...) or (B, ..., K); got shape ",
                    x.sizes());
  const int64_t dim = channel_dim < 0 ? channel_dim + ndim : channel_dim;
  TORCH_CHECK_VALUE(dim == 1 || dim == ndim - 1, "bernoulli_gate: channel_dim must be 1 or -1 (the last of x's ",
                    ndim, " dims), got ", channel_dim);
  return dim;
}

inline GateLayout gate_layout(const at::Tensor& x, int64_t channel_dim) {
  const int64_t dim = normalize_channel_dim(x, channel_dim);
  GateLayout layout;
  layout.batch = x.size(0);
  layout.channels = x.size(dim);
  layout.positions = 1;
  for (int64_t d = 1; d < x.dim(); ++d) {
    if (d != dim) layout.positions *= x.size(d);
  }
  if (dim == x.dim() - 1 && x.dim() > 2) {
    layout.channels_innermost = true;  // tokens (B, N, K): contiguous memory is already (B, S, K)
  } else if (layout.positions == 1) {
    layout.channels_innermost = true;  // (B, K) or 1x1 maps: one row of K per sample beats K rows of one
  } else if (!x.is_contiguous() && x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    layout.channels_innermost = true;
    layout.memory_format = at::MemoryFormat::ChannelsLast;
  } else if (!x.is_contiguous() && x.dim() == 5 && x.is_contiguous(at::MemoryFormat::ChannelsLast3d)) {
    layout.channels_innermost = true;
    layout.memory_format = at::MemoryFormat::ChannelsLast3d;
  }
  return layout;
}

// A dense copy (or x itself, when already dense) in the order the kernels expect for this layout.
inline at::Tensor to_gate_memory(const at::Tensor& t, const GateLayout& layout) {
  return t.contiguous(layout.memory_format);
}

// Checks x, p and noise of bernoulli_gate (or grad_y, x and mask of its backward) and returns the layout.
inline GateLayout check_gate_args(const at::Tensor& x, const at::Tensor& p, const std::optional<at::Tensor>& noise,
                                  int64_t channel_dim, const char* p_name = "p") {
  check_float_tensor(x, "bernoulli_gate", "x");
  check_float_tensor(p, "bernoulli_gate", p_name);
  check_same_device(p, x, "bernoulli_gate", p_name, "x");
  const GateLayout layout = gate_layout(x, channel_dim);
  TORCH_CHECK_VALUE(p.dim() == 2 && p.size(0) == layout.batch && p.size(1) == layout.channels, "bernoulli_gate: ",
                    p_name, " must have shape (B, K) = (", layout.batch, ", ", layout.channels, ") for x of shape ",
                    x.sizes(), " with channel_dim=", channel_dim, ", got ", p.sizes());
  if (noise.has_value()) {
    check_float_tensor(*noise, "bernoulli_gate", "noise");
    check_same_device(*noise, x, "bernoulli_gate", "noise", "x");
    TORCH_CHECK_VALUE(noise->sizes() == p.sizes(), "bernoulli_gate: noise must have the shape of p, (B, K) = (",
                      layout.batch, ", ", layout.channels, "), got ", noise->sizes());
  }
  return layout;
}

inline void check_grad_like(const at::Tensor& grad, const at::Tensor& ref, const char* op, const char* name,
                            const char* ref_name) {
  TORCH_CHECK_VALUE(grad.sizes() == ref.sizes(), op, ": ", name, " must have the shape of ", ref_name, ", ",
                    ref.sizes(), ", got ", grad.sizes());
  TORCH_CHECK_TYPE(grad.scalar_type() == ref.scalar_type(), op, ": ", name, " must have the dtype of ", ref_name,
                   ", ", ref.scalar_type(), ", got ", grad.scalar_type());
  check_same_device(grad, ref, op, name, ref_name);
}

inline void check_sample_class_args(const at::Tensor& logits, const std::optional<at::Tensor>& noise) {
  check_float_tensor(logits, "sample_class", "logits");
  TORCH_CHECK_VALUE(logits.dim() == 2 && logits.size(1) >= 1,
                    "sample_class: logits must have shape (B, C) with C >= 1, got ", logits.sizes());
  if (noise.has_value()) {
    check_float_tensor(*noise, "sample_class", "noise");
    check_same_device(*noise, logits, "sample_class", "noise", "logits");
    TORCH_CHECK_VALUE(noise->dim() == 1 && noise->size(0) == logits.size(0),
                      "sample_class: noise must have shape (B,) = (", logits.size(0), ",), got ", noise->sizes());
  }
}

inline void check_sample_class_backward_args(const at::Tensor& grad_onehot, const at::Tensor& logits) {
  check_float_tensor(logits, "sample_class_backward", "logits");
  TORCH_CHECK_VALUE(logits.dim() == 2, "sample_class_backward: logits must have shape (B, C), got ", logits.sizes());
  check_grad_like(grad_onehot, logits, "sample_class_backward", "grad_onehot", "logits");
}

// The dtype in which a kernel accumulates for inputs of dtype t: float64 for float64, else float32.
inline at::ScalarType opmath_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace picnn
