// Autograd of sample_class in C++, registered for the Autograd dispatch key; device-agnostic like
// bernoulli_gate_autograd.cpp. The gradient of the straight-through one-hot is the softmax backward
// pi * (g - sum(pi * g)); when the backward is recorded (create_graph=True) it is computed with
// differentiable ATen ops (reference.sample_class_backward), else by the fused kernel.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "../common/checks.h"

namespace picnn {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using SampleSignature = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const std::optional<at::Tensor>&,
                                                           std::optional<at::Generator>);
using SampleBackwardSignature = at::Tensor(const at::Tensor&, const at::Tensor&);

const c10::TypedOperatorHandle<SampleSignature>& sample_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("picnn::sample_class", "").typed<SampleSignature>();
  return op;
}

const c10::TypedOperatorHandle<SampleBackwardSignature>& sample_backward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("picnn::sample_class_backward", "")
                             .typed<SampleBackwardSignature>();
  return op;
}

at::Tensor differentiable_sample_backward(const at::Tensor& grad_onehot, const at::Tensor& logits) {
  const at::ScalarType acc = opmath_dtype(logits.scalar_type());
  const at::Tensor pi = at::softmax(logits.to(acc), -1);
  const at::Tensor g = grad_onehot.to(acc);
  return (pi * (g - (pi * g).sum(-1, /*keepdim=*/true))).to(logits.scalar_type());
}

class SampleClassFunction : public torch::autograd::Function<SampleClassFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& logits, const std::optional<at::Tensor>& noise,
                               std::optional<at::Generator> generator) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [onehot, index] = sample_op().call(logits, noise, std::move(generator));
    ctx->save_for_backward({logits});
    ctx->mark_non_differentiable({index});
    ctx->set_materialize_grads(false);
    return {onehot, index};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const at::Tensor& grad_onehot = grad_outputs[0];
    variable_list grads(3);
    if (!grad_onehot.defined() || !ctx->needs_input_grad(0)) return grads;
    const at::Tensor logits = ctx->get_saved_variables()[0];
    if (at::GradMode::is_enabled()) {
      grads[0] = differentiable_sample_backward(grad_onehot, logits);
    } else {
      at::AutoDispatchBelowADInplaceOrView guard;
      grads[0] = sample_backward_op().call(grad_onehot, logits);
    }
    return grads;
  }
};

std::tuple<at::Tensor, at::Tensor> sample_class_autograd(const at::Tensor& logits,
                                                         const std::optional<at::Tensor>& noise,
                                                         std::optional<at::Generator> generator) {
  if (!at::GradMode::is_enabled() || !logits.requires_grad()) {  // nothing to record: no node
    at::AutoDispatchBelowADInplaceOrView guard;
    return sample_op().call(logits, noise, std::move(generator));
  }
  variable_list out = SampleClassFunction::apply(logits, noise, std::move(generator));
  return {std::move(out[0]), std::move(out[1])};
}

}  // namespace

TORCH_LIBRARY_IMPL(picnn, Autograd, m) {
  m.impl("sample_class", &sample_class_autograd);
}

}  // namespace picnn
