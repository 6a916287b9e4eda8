// The emulated CUDA ops, callable from Python on CPU tensors: torch.ops.picnn_emu.<op> runs the CUDA
// implementation of picnn::<op> (csrc/cuda/*.cu, registered at the CUDA key and compiled under cuda_emu.h) by
// redispatching the call to the CUDA key. The compiled CPU backend (picnn_ext._C) must be loaded first: it
// defines the picnn schemas.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <string>

namespace {

void redispatch_to_cuda(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const std::string name = op.schema().name().substr(std::string("picnn_emu::").size());
  const auto target = c10::Dispatcher::singleton().findSchemaOrThrow(("picnn::" + name).c_str(), "");
  target.redispatchBoxed(c10::DispatchKeySet(c10::DispatchKey::CUDA), stack);
}

}  // namespace

TORCH_LIBRARY(picnn_emu, m) {
  m.def("bernoulli_gate(Tensor x, Tensor p, bool hard, Tensor? noise, Generator? generator, int channel_dim)"
        " -> (Tensor, Tensor)");
  m.def("bernoulli_gate_backward(Tensor grad_y, Tensor x, Tensor mask, int channel_dim) -> (Tensor, Tensor)");
  m.def("sample_class(Tensor logits, Tensor? noise, Generator? generator) -> (Tensor, Tensor)");
  m.def("sample_class_backward(Tensor grad_onehot, Tensor logits) -> Tensor");
  m.def("philox_uniform(Tensor like, int seed, int offset) -> Tensor");
}

TORCH_LIBRARY_IMPL(picnn_emu, CompositeExplicitAutograd, m) {
  for (const char* name : {"bernoulli_gate", "bernoulli_gate_backward", "sample_class", "sample_class_backward",
                           "philox_uniform"}) {
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&redispatch_to_cuda>());
  }
}
