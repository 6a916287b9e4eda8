// Philox uniforms of consecutive blocks on the CPU, vectorised (the draw of a hard gate). The ten rounds per
// four elements are what a small gate spends most of its kernel time on, and the portable loop that the
// compiler vectorises as it can is 2.5x slower than lanes written for AVX-512 (measured: 8,192 uniforms in
// 17 us with AVX2 code from the compiler, 6.6 us by hand with AVX-512). One version is chosen when first
// used, from the CPU's features; every version returns, element for element, the floats of
// philox_uniform() in common/philox.h (the CUDA kernels and picnn_ext/reference.py draw the same).
#pragma once

#include <cstdint>

namespace picnn {

// out[4 * j + w] = word w of Philox block (first_block + j) of the draw keyed by (seed, offset), as a uniform
// float in [0, 1), for j in [0, blocks). Uses the best version this CPU runs.
void philox_uniform_blocks(uint64_t seed, uint64_t offset, uint64_t first_block, int64_t blocks, float* out);

// The version philox_uniform_blocks uses here: "avx512", "avx2" or "portable" (picnn_ext.info shows it).
const char* philox_cpu_version();

// Each version, for the C++ test (tests/cpp/test_ops.cpp) to compare all of them with philox_block on any
// CPU that runs them; callers use philox_uniform_blocks.
namespace philox_versions {
void portable(uint64_t seed, uint64_t offset, uint64_t first_block, int64_t blocks, float* out);
bool avx2_supported();
void avx2(uint64_t seed, uint64_t offset, uint64_t first_block, int64_t blocks, float* out);
bool avx512_supported();
void avx512(uint64_t seed, uint64_t offset, uint64_t first_block, int64_t blocks, float* out);
}  // namespace philox_versions

}  // namespace picnn
