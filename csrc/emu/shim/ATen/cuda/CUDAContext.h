// Emulation stand-in: the current stream is null, and the device has few multiprocessors, so the kernels'
// grid-stride loops give every block several tasks (the code paths that reuse shared memory between tasks).
#pragma once
#include <cuda_runtime.h>
namespace picnn_emu {
struct DeviceProps {
  int multiProcessorCount;
  size_t sharedMemPerBlockOptin;
};
const DeviceProps* device_props();
}  // namespace picnn_emu
namespace at::cuda {
inline const picnn_emu::DeviceProps* getCurrentDeviceProperties() { return picnn_emu::device_props(); }
inline cudaStream_t getCurrentCUDAStream() { return nullptr; }
}  // namespace at::cuda
