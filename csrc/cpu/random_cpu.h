// The Philox key of one CPU op call.
#pragma once

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/Generator.h>

#include <cstdint>
#include <limits>
#include <mutex>
#include <optional>

namespace picnn {

// One 64-bit seed per call from the CPU generator (offset 0): the value `aten::random_` gives an int64
// tensor (random64() reduced to [0, 2^63), ATen's uniform_int_distribution<int64_t>), read straight from
// the generator because three dispatcher calls (empty, random_, item) cost more than a small gate.
// picnn_ext/reference.py draws it with that aten::random_ call, so the compiled and the pure-PyTorch CPU
// backends sample identical values after the same torch.manual_seed (tests/test_random.py checks it).
inline uint64_t draw_seed_cpu(const std::optional<at::Generator>& generator) {
  auto* gen = at::get_generator_or_default<at::CPUGeneratorImpl>(generator, at::detail::getDefaultCPUGenerator());
  std::lock_guard<std::mutex> lock(gen->mutex_);
  return gen->random64() % (static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) + 1);
}

}  // namespace picnn
