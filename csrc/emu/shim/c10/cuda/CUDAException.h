// Emulation stand-in: launches report their errors by throwing (picnn_emu::launch).
#pragma once
#include <c10/util/Exception.h>
#define C10_CUDA_KERNEL_LAUNCH_CHECK() ((void)0)
#define C10_CUDA_CHECK(expr) TORCH_CHECK((expr) == cudaSuccess, "CUDA call failed: " #expr)
