// The Philox key of one CPU op call.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>

namespace picnn {

// One 64-bit seed per call from the CPU generator (offset 0). picnn_ext/reference.py draws it with the
// same aten::random_ call, so the compiled and the pure-PyTorch CPU backends sample identical values
// after the same torch.manual_seed.
inline uint64_t draw_seed_cpu(const std::optional<at::Generator>& generator) {
  at::Tensor seed = at::empty({}, at::TensorOptions().dtype(at::kLong));
  seed.random_(generator);
  return static_cast<uint64_t>(seed.item<int64_t>());
}

}  // namespace picnn
