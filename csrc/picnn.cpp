// All op schemas of picnn_ext in one place, plus the build-info op. The kernels register themselves
// at the bottom of cpu/*.cpp and cuda/*.cu, autograd (device-agnostic, in C++) at the bottom of
// autograd/*.cpp; the fake (meta) kernels are registered from Python (picnn_ext/_registration.py).
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>
#include <torch/version.h>

#include <sstream>
#include <string>

#include "cpu/philox_cpu.h"

namespace picnn {
namespace {

// A `key=value;` list that picnn_ext.info parses: what this CPU library was compiled with.
std::string build_info() {
  std::ostringstream out;
  out << "torch=" << TORCH_VERSION << ";";
#if defined(__clang__)
  out << "compiler=clang " << __clang_major__ << "." << __clang_minor__ << ";";
#elif defined(__GNUC__)
  out << "compiler=gcc " << __GNUC__ << "." << __GNUC_MINOR__ << ";";
#endif
  out << "cxx_standard=" << __cplusplus << ";";
  out << "float_vector_width=" << at::vec::Vectorized<float>::size() << ";";
  out << "philox=" << philox_cpu_version() << ";";
  out << "parallel=" << (AT_PARALLEL_OPENMP ? "openmp" : AT_PARALLEL_NATIVE ? "native" : "none") << ";";
  return out.str();
}

}  // namespace

TORCH_LIBRARY(picnn, m) {
  // y = x * mask[b, k] broadcast over positions; mask ~ Bernoulli(p) (hard) or mask = p (soft).
  m.def("bernoulli_gate(Tensor x, Tensor p, bool hard, Tensor? noise, Generator? generator, int channel_dim)"
        " -> (Tensor, Tensor)");
  // Straight-through backward: grad_x = grad_y * mask, grad_p = sum over positions of grad_y * x.
  m.def("bernoulli_gate_backward(Tensor grad_y, Tensor x, Tensor mask, int channel_dim) -> (Tensor, Tensor)");
  // One categorical draw per row of softmax(logits): (one-hot of the draw, its index).
  m.def("sample_class(Tensor logits, Tensor? noise, Generator? generator) -> (Tensor, Tensor)");
  // Softmax backward of the straight-through one-hot: pi * (g - sum(pi * g)).
  m.def("sample_class_backward(Tensor grad_onehot, Tensor logits) -> Tensor");
  // The uniforms the gate draws for key (seed, offset), shaped like `like` (B, K): exposed so that tests
  // can show identical draws on every backend.
  m.def("philox_uniform(Tensor like, int seed, int offset) -> Tensor");
  // NND's controller at inference, fused: W2 relu(W1 mean_positions(x) + b1) + b2 (no autograd kernel);
  // x (B, C, *S), or (B, C) already pooled.
  m.def("controller_logits(Tensor x, Tensor weight1, Tensor bias1, Tensor weight2, Tensor bias2) -> Tensor");
  // The same z, with the pattern the skipping path reads: (z, open (K,) uint8: some sample has z > 0,
  // mixed () bool: some sample closes a filter that another opens).
  m.def("controller_gates(Tensor x, Tensor weight1, Tensor bias1, Tensor weight2, Tensor bias2)"
        " -> (Tensor, Tensor, Tensor)");
  // The skipping path's activation with the next controller's pooling: x <- relu(x + residual) in place,
  // returns the mean over positions of the result, (B, C) (no autograd kernel).
  m.def("relu_mean_(Tensor(a!) x, Tensor? residual) -> Tensor");
  m.def("build_info() -> str", &build_info);
}

}  // namespace picnn
