// Emulation stand-in for the CUDA generator: the (seed, offset) of a call is the CPU backend's (one 64-bit seed
// from the CPU generator, offset 0; csrc/cpu/random_cpu.h), so emulated masks can be compared bit for bit with
// the compiled CPU backend's after the same torch.manual_seed.
#pragma once
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/cuda/PhiloxCudaState.h>
#include <ATen/core/Generator.h>
#include <limits>
namespace at {
struct CUDAGeneratorImpl : public CPUGeneratorImpl {
  static c10::DeviceType device_type() { return c10::DeviceType::CPU; }
  PhiloxCudaState philox_cuda_state(uint64_t) {
    return PhiloxCudaState(random64() % (static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) + 1), 0);
  }
};
namespace cuda::detail {
inline const Generator& getDefaultCUDAGenerator() { return at::detail::getDefaultCPUGenerator(); }
}  // namespace cuda::detail
}  // namespace at
