// Autograd of bernoulli_gate in C++, registered for the Autograd dispatch key (as torchvision does in
// csrc/ops/autograd/): a call never enters Python autograd when the library is built. Device-agnostic: the
// forward and the backward go back through the dispatcher below autograd, to the CPU or CUDA kernel (or the
// pure-PyTorch kernel that fills in for a device that was not compiled), or to the fake kernel under
// torch.compile.
//
// Double backward: when the backward itself is recorded (create_graph=True) it is computed with
// differentiable ATen ops, the formula of picnn_ext/reference.py with the straight-through mask
// p + sg(mask - p) in place of the mask, so higher derivatives are those of the composition
// x * (p + sg(mask - p)); otherwise the fused backward kernel runs.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "../common/checks.h"

namespace picnn {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using GateSignature = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, bool,
                                                         const std::optional<at::Tensor>&,
                                                         std::optional<at::Generator>, int64_t);
using GateBackwardSignature = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                 const at::Tensor&, int64_t);

// Looked up once: a schema lookup per call would cost more than the small kernels it serves.
const c10::TypedOperatorHandle<GateSignature>& gate_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("picnn::bernoulli_gate", "").typed<GateSignature>();
  return op;
}

const c10::TypedOperatorHandle<GateBackwardSignature>& gate_backward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("picnn::bernoulli_gate_backward", "")
                             .typed<GateBackwardSignature>();
  return op;
}

// (B, K) viewed so that it broadcasts against x with the channels on dim `dim` (1 or the last).
at::Tensor broadcast_over_positions(const at::Tensor& per_channel, const at::Tensor& x, int64_t dim) {
  std::vector<int64_t> shape(x.dim(), 1);
  shape[0] = per_channel.size(0);
  shape[dim] = per_channel.size(1);
  return per_channel.view(shape);
}

// The straight-through backward with differentiable ATen ops (reference.bernoulli_gate_backward).
std::tuple<at::Tensor, at::Tensor> differentiable_gate_backward(const at::Tensor& grad_y, const at::Tensor& x,
                                                                const at::Tensor& mask, int64_t channel_dim) {
  const int64_t dim = normalize_channel_dim(x, channel_dim);
  const at::ScalarType acc = opmath_dtype(x.scalar_type());
  const at::Tensor g = grad_y.to(acc);
  const at::Tensor grad_x = (g * broadcast_over_positions(mask.to(acc), x, dim)).to(x.scalar_type());
  std::vector<int64_t> positions;
  for (int64_t d = 1; d < x.dim(); ++d) {
    if (d != dim) positions.push_back(d);
  }
  const at::Tensor product = g * x.to(acc);
  const at::Tensor grad_p = positions.empty() ? product : product.sum(positions);
  return {grad_x, grad_p.to(mask.scalar_type()).reshape({x.size(0), x.size(dim)})};
}

class BernoulliGateFunction : public torch::autograd::Function<BernoulliGateFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& p, bool hard,
                               const std::optional<at::Tensor>& noise, std::optional<at::Generator> generator,
                               int64_t channel_dim) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [y, mask] = gate_op().call(x, p, hard, noise, std::move(generator), channel_dim);
    ctx->save_for_backward({x, p, mask});
    ctx->saved_data["channel_dim"] = channel_dim;
    ctx->mark_non_differentiable({mask});
    // mask has no gradient: no zero tensor is made for it in the backward.
    ctx->set_materialize_grads(false);
    return {y, mask};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const at::Tensor& grad_y = grad_outputs[0];
    if (!grad_y.defined()) return variable_list(6);
    const variable_list saved = ctx->get_saved_variables();
    const int64_t channel_dim = ctx->saved_data["channel_dim"].toInt();
    at::Tensor grad_x, grad_p;
    const at::Tensor& x = saved[0];
    const at::Tensor& p = saved[1];
    const at::Tensor& mask = saved[2];
    if (at::GradMode::is_enabled()) {
      const at::Tensor straight_through = p + (mask - p).detach();
      std::tie(grad_x, grad_p) = differentiable_gate_backward(grad_y, x, straight_through, channel_dim);
    } else {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(grad_x, grad_p) = gate_backward_op().call(grad_y, x, mask, channel_dim);
    }
    variable_list grads(6);
    if (ctx->needs_input_grad(0)) grads[0] = std::move(grad_x);
    if (ctx->needs_input_grad(1)) grads[1] = std::move(grad_p);
    return grads;
  }
};

std::tuple<at::Tensor, at::Tensor> bernoulli_gate_autograd(const at::Tensor& x, const at::Tensor& p, bool hard,
                                                            const std::optional<at::Tensor>& noise,
                                                            std::optional<at::Generator> generator,
                                                            int64_t channel_dim) {
  // Nothing to record (inference, or inputs without grad): skip the node, whose allocation and saved
  // tensors cost more than a small gate's kernel.
  if (!at::GradMode::is_enabled() || !(x.requires_grad() || p.requires_grad())) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return gate_op().call(x, p, hard, noise, std::move(generator), channel_dim);
  }
  variable_list out = BernoulliGateFunction::apply(x, p, hard, noise, std::move(generator), channel_dim);
  return {std::move(out[0]), std::move(out[1])};
}

}  // namespace

TORCH_LIBRARY_IMPL(picnn, Autograd, m) {
  m.impl("bernoulli_gate", &bernoulli_gate_autograd);
}

}  // namespace picnn
