// What the gate's CUDA translation units share (bernoulli_gate_cuda.cu: the ops, the mask alone;
// gate_rows_cuda.cu: memory (B, K, S); gate_columns_cuda.cu: memory (B, S, K)): the mask rule, the pack
// helpers, and the launchers, each of which dispatches on x's dtype and the vector width. Split so that nvcc
// compiles the kernels of the two memory orders in parallel.
//
// Every kernel vectorises with 16-byte packs of the flat buffer whatever H*W or K is (common/gate_spans.h
// splits a run of elements into a scalar head, whole packs and a scalar tail), reads p and the mask and
// writes the mask and grad_p in their own dtype (no conversion launches), and keys every uniform by the
// (sample, channel) index b * K + k, one Philox block for four of them, so CPU and CUDA masks are identical.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>

#include "cuda_utils.cuh"

namespace picnn {

constexpr int kUnroll = 4;  // packs a lane loads before it stores: several loads in flight per thread

// The failure path of gate_mask, out of line: inlined, its printf argument buffer and the values the call
// clobbers would give every kernel that draws a mask a stack frame and STL/LDL around the hot loop (sass_check).
static PICNN_NOINLINE __device__ void bad_probability(int64_t i, double prob) {
  printf("picnn_ext bernoulli_gate: p must hold probabilities in [0, 1] (no NaN); p.flatten()[%lld] = %f\n",
         static_cast<long long>(i), prob);
  __assert_fail("bernoulli_gate: p must hold probabilities in [0, 1] (no NaN)", __FILE__, __LINE__, __func__);
}

// The mask of (sample, channel) index i: 1 where u < p (hard), p itself (soft), computed in double (exact for
// every float p and 24-bit u, so the comparison is the CPU's). A p outside [0, 1] or NaN stops the kernel with
// a device-side assertion that names p, after a line giving the index and the value (bad_probability).
__device__ __forceinline__ double gate_mask(double prob, float philox_u, const FloatArray& noise, bool hard, int64_t i,
                                            bool check) {
  if (check && !(prob >= 0.0 && prob <= 1.0)) bad_probability(i, prob);
  if (!hard) return prob;
  const double u = noise.data != nullptr ? noise.load(i) : static_cast<double>(philox_u);
  return u < prob ? 1.0 : 0.0;
}

template <typename scalar_t, int VEC>
__device__ __forceinline__ void scale_pack(Pack<scalar_t, VEC>& v, opmath_t<scalar_t> m) {
#pragma unroll
  for (int j = 0; j < VEC; ++j) v.v[j] = static_cast<scalar_t>(static_cast<opmath_t<scalar_t>>(v.v[j]) * m);
}

// Calls f.template operator()<VEC>() with 16-byte packs when `wide` (every pointer aligned, and whatever the
// caller's layout needs), else VEC = 1.
template <typename scalar_t, typename F>
void with_vec_width(bool wide, F&& f) {
  if (wide) {
    f.template operator()<vec_width<scalar_t>()>();
  } else {
    f.template operator()<1>();
  }
}

// What a forward kernel needs to draw the mask: p, the uniforms when given (else Philox), the mask it writes.
struct GateDraw {
  FloatArray p, noise, mask;
  bool hard;
  at::PhiloxCudaState philox;
};

// The mask alone (bernoulli_gate_cuda.cu): for a gate without elements, and for channels-last K above 16K.
void launch_gate_mask(const GateDraw& draw, int64_t n, cudaStream_t stream);

// Memory (B, K, S), rows = B * K (gate_rows_cuda.cu). The forward draws and writes the mask.
void launch_gate_forward_rows(const at::Tensor& x, const at::Tensor& y, const GateDraw& draw, int64_t rows,
                              int64_t S, cudaStream_t stream);
void launch_gate_backward_rows(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& grad_x,
                               FloatArray mask, FloatArray grad_p, int64_t rows, int64_t S, cudaStream_t stream);

// Memory (B, S, K) (gate_columns_cuda.cu). The forward draws and writes the mask (K up to 16K) or reads the one
// launch_gate_mask wrote.
void launch_gate_forward_columns(const at::Tensor& x, const at::Tensor& y, const GateDraw& draw, int64_t B,
                                 int64_t S, int64_t K, cudaStream_t stream);
void launch_gate_backward_columns(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& grad_x,
                                  FloatArray mask, FloatArray grad_p, int64_t B, int64_t S, int64_t K,
                                  cudaStream_t stream);

}  // namespace picnn
