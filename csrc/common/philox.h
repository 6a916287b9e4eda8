// Counter-based Philox4x32-10 random numbers, shared by the CPU and the CUDA kernels.
//
// A draw is keyed by the logical element index i = b * K + k (word i % 4 of the Philox block of counter
// (offset / 4, i / 4)), never by a thread or block id, so the
// same (seed, offset) gives the same mask on any backend, launch shape or GPU model. The pure-PyTorch
// fallback (picnn_ext/reference.py) implements the same function with int64 tensor arithmetic.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define PICNN_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define PICNN_HOST_DEVICE inline
#endif

namespace picnn {

// Multipliers and Weyl increments of Philox4x32 (Salmon et al., "Parallel random numbers: as easy as
// 1, 2, 3", SC'11).
constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;

struct PhiloxBlock {
  uint32_t v[4];
};

PICNN_HOST_DEVICE uint32_t mul_hi_lo(uint32_t a, uint32_t b, uint32_t* hi) {
  const uint64_t product = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  *hi = static_cast<uint32_t>(product >> 32);
  return static_cast<uint32_t>(product);
}

// Ten rounds of Philox4x32 on `counter` under `key`.
PICNN_HOST_DEVICE PhiloxBlock philox4x32_10(PhiloxBlock counter, uint32_t key0, uint32_t key1) {
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, hi1;
    const uint32_t lo0 = mul_hi_lo(kPhiloxM0, counter.v[0], &hi0);
    const uint32_t lo1 = mul_hi_lo(kPhiloxM1, counter.v[2], &hi1);
    counter = PhiloxBlock{{hi1 ^ counter.v[1] ^ key0, lo1, hi0 ^ counter.v[3] ^ key1, lo0}};
    key0 += kPhiloxW0;
    key1 += kPhiloxW1;
  }
  return counter;
}

// The four 32-bit words of Philox block `block` of the draw identified by (seed, offset). The counter is
// (offset / 4, block) and the key the seed: the layout of curand's Philox for subsequence `block` at
// `offset`, which PyTorch's CUDA generator hands out in exclusive ranges (philox_cuda_state), so these
// words never repeat those of another op drawing from the same generator.
PICNN_HOST_DEVICE PhiloxBlock philox_block(uint64_t seed, uint64_t offset, uint64_t block) {
  const uint64_t step = offset >> 2;
  const PhiloxBlock counter{{static_cast<uint32_t>(step), static_cast<uint32_t>(step >> 32),
                             static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32)}};
  return philox4x32_10(counter, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// A 32-bit word as a uniform float in [0, 1): its top 24 bits, so every value is exact in float32 and
// `u < p` is the same comparison on every backend.
PICNN_HOST_DEVICE float word_to_uniform(uint32_t word) {
  return static_cast<float>(word >> 8) * (1.0f / 16777216.0f);
}

// Word `which` (0 to 3) of a block, by a select chain: indexing the array with a value known only at run time
// would put the block in local memory (a stack frame and STL/LDL on the GPU), while the selects keep it in
// registers. The same word either way, so CPU and CUDA draws stay identical.
PICNN_HOST_DEVICE uint32_t philox_word(const PhiloxBlock& words, unsigned which) {
  return which == 0 ? words.v[0] : which == 1 ? words.v[1] : which == 2 ? words.v[2] : words.v[3];
}

// The uniform of element `index`: word index % 4 of block index / 4 (one Philox call serves four
// consecutive elements; a kernel that owns all four computes the block once).
PICNN_HOST_DEVICE float philox_uniform(uint64_t seed, uint64_t offset, uint64_t index) {
  return word_to_uniform(philox_word(philox_block(seed, offset, index >> 2), static_cast<unsigned>(index & 3)));
}

}  // namespace picnn
