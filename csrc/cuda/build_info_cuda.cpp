// `picnn::cuda_build_info()`: what the CUDA library was compiled with (read by picnn_ext.info; the
// architectures are in picnn_ext/_build_config.py, written by setup.py).
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <sstream>
#include <string>

namespace picnn {
namespace {

std::string cuda_build_info() {
  std::ostringstream out;
  out << "cuda_runtime=" << CUDART_VERSION / 1000 << "." << (CUDART_VERSION % 1000) / 10 << ";";
  return out.str();
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(picnn, m) {
  m.def("cuda_build_info() -> str", &cuda_build_info);
}

}  // namespace picnn
