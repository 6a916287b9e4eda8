// Kernels with one planted bug each, built only into the emulation library: scripts/test_cuda_emulation.sh
// asserts that the emulation (or the sanitizer of its build) reports every one of them. A harness that
// cannot fail proves nothing. torch.ops.picnn_emu_bugs.run(name, out) launches kernel `name` writing `out`.
#include <torch/library.h>

#include "../../csrc/cuda/cuda_utils.cuh"

namespace {

// A read of shared memory that no barrier separates from another thread's write (ThreadSanitizer's report).
__global__ void bug_missing_barrier_kernel(float* out) {
  __shared__ float s[64];
  s[threadIdx.x] = static_cast<float>(threadIdx.x);
  out[threadIdx.x] = s[(threadIdx.x + 1) % 64];  // no __syncthreads() before
}

// A read one element past the end of the dynamic shared memory (AddressSanitizer's report).
__global__ void bug_past_end_kernel(float* out) {
  PICNN_DYNAMIC_SHARED(unsigned char, shared_bytes);
  float* s = reinterpret_cast<float*>(shared_bytes);  // blockDim.x floats
  s[threadIdx.x] = 1.0f;
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x + 1];
}

// A shuffle that lane 5 of the full mask skips (the emulation's divergence report).
__global__ void bug_shuffle_skipped_kernel(float* out) {
  float v = static_cast<float>(threadIdx.x);
  if (threadIdx.x % 32 != 5) v = __shfl_xor_sync(0xffffffffu, v, 1);
  out[threadIdx.x] = v;
}

// A 16-byte load from an address that is not 16-byte aligned (UndefinedBehaviorSanitizer's alignment report).
__global__ void bug_misaligned_pack_kernel(float* out) {
  using P = picnn::Pack<float, 4>;
  const P* p = reinterpret_cast<const P*>(out + 1);
  if (threadIdx.x == 0) {
    const P v = p[0];
    out[8] = v.v[0];
  }
}

// A __syncthreads inside a branch that half of the block skips (the emulation's divergence report).
__global__ void bug_branch_barrier_kernel(float* out) {
  if (threadIdx.x < 32) {
    out[threadIdx.x] = 1.0f;
    __syncthreads();
  }
  out[threadIdx.x] += 1.0f;
}

// A device-side assertion after a printf: both messages must reach the caller.
__global__ void assert_message_kernel(float* out) {
  if (threadIdx.x == 3) {
    printf("picnn_ext planted: thread %d of block %d stops here\n", static_cast<int>(threadIdx.x),
           static_cast<int>(blockIdx.x));
    __assert_fail("planted assertion", __FILE__, __LINE__, __func__);
  }
  out[threadIdx.x] = 0.0f;
}

void run(const std::string& name, const at::Tensor& out) {
  TORCH_CHECK(out.is_contiguous() && out.scalar_type() == at::kFloat && out.numel() >= 64, "out: 64 floats");
  float* o = out.data_ptr<float>();
  if (name == "missing_barrier") PICNN_LAUNCH((bug_missing_barrier_kernel), 1, 64, 0, nullptr)(o);
  else if (name == "past_end") PICNN_LAUNCH((bug_past_end_kernel), 1, 64, 64 * sizeof(float), nullptr)(o);
  else if (name == "shuffle_skipped") PICNN_LAUNCH((bug_shuffle_skipped_kernel), 1, 64, 0, nullptr)(o);
  else if (name == "misaligned_pack") PICNN_LAUNCH((bug_misaligned_pack_kernel), 1, 32, 0, nullptr)(o);
  else if (name == "branch_barrier") PICNN_LAUNCH((bug_branch_barrier_kernel), 1, 64, 0, nullptr)(o);
  else if (name == "assert_message") PICNN_LAUNCH((assert_message_kernel), 2, 64, 0, nullptr)(o);
  else TORCH_CHECK_VALUE(false, "name: no planted kernel ", name);
}

}  // namespace

TORCH_LIBRARY(picnn_emu_bugs, m) { m.def("run(str name, Tensor out) -> ()", &run); }
