// The versions of philox_uniform_blocks (see philox_cpu.h). Each runs 16 (AVX-512) or 8 (AVX2) Philox blocks
// side by side, one block per 32-bit lane; a lane's 32x32->64-bit products come from two even-lane
// multiplies (vpmuludq) and a blend, and the four words of each block are transposed back into element order
// before the store. Written with intrinsics under target attributes, so the library itself needs no -mavx
// flags and still loads on any x86-64 CPU (and builds elsewhere with the portable version only).
#include "philox_cpu.h"

#include <algorithm>

#include "../common/philox.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define PICNN_X86_SIMD 1
#include <immintrin.h>
#else
#define PICNN_X86_SIMD 0
#endif

namespace picnn {
namespace philox_versions {

namespace {

// Groups of `lanes` blocks whose counters share their high word (no carry from the low word inside the
// group), so that the SIMD versions can build the counters with one 32-bit add.
int64_t simd_groups(uint64_t first_block, int64_t blocks, int lanes) {
  const uint64_t before_carry = (uint64_t{1} << 32) - static_cast<uint32_t>(first_block);  // blocks until the wrap
  return static_cast<int64_t>(std::min(static_cast<uint64_t>(blocks / lanes), before_carry / lanes));
}

}  // namespace

void portable(uint64_t seed, uint64_t offset, uint64_t first_block, int64_t blocks, float* out) {
  // Lanes as plain arrays (structure of arrays): the compiler vectorises what it can.
  constexpr int kLanes = 16;
  const uint64_t step = offset >> 2;
  int64_t j = 0;
  for (; j + kLanes <= blocks; j += kLanes) {
    uint32_t c0[kLanes], c1[kLanes], c2[kLanes], c3[kLanes];
    for (int l = 0; l < kLanes; ++l) {
      const uint64_t block = first_block + static_cast<uint64_t>(j + l);
      c0[l] = static_cast<uint32_t>(step);
      c1[l] = static_cast<uint32_t>(step >> 32);
      c2[l] = static_cast<uint32_t>(block);
      c3[l] = static_cast<uint32_t>(block >> 32);
    }
    uint32_t key0 = static_cast<uint32_t>(seed), key1 = static_cast<uint32_t>(seed >> 32);
    for (int round = 0; round < 10; ++round) {
      for (int l = 0; l < kLanes; ++l) {
        const uint64_t product0 = static_cast<uint64_t>(kPhiloxM0) * c0[l];
        const uint64_t product1 = static_cast<uint64_t>(kPhiloxM1) * c2[l];
        const uint32_t next0 = static_cast<uint32_t>(product1 >> 32) ^ c1[l] ^ key0;
        const uint32_t next2 = static_cast<uint32_t>(product0 >> 32) ^ c3[l] ^ key1;
        c1[l] = static_cast<uint32_t>(product1);
        c3[l] = static_cast<uint32_t>(product0);
        c0[l] = next0;
        c2[l] = next2;
      }
      key0 += kPhiloxW0;
      key1 += kPhiloxW1;
    }
    float* o = out + 4 * j;
    for (int l = 0; l < kLanes; ++l) {
      o[4 * l] = word_to_uniform(c0[l]);
      o[4 * l + 1] = word_to_uniform(c1[l]);
      o[4 * l + 2] = word_to_uniform(c2[l]);
      o[4 * l + 3] = word_to_uniform(c3[l]);
    }
  }
  for (; j < blocks; ++j) {
    const PhiloxBlock words = philox_block(seed, offset, first_block + static_cast<uint64_t>(j));
    for (int w = 0; w < 4; ++w) out[4 * j + w] = word_to_uniform(words.v[w]);
  }
}

#if PICNN_X86_SIMD

bool avx2_supported() { return __builtin_cpu_supports("avx2"); }

bool avx512_supported() { return __builtin_cpu_supports("avx512f"); }

// 32x32->64-bit products of every lane of c with m: the low and the high words, lane by lane.
__attribute__((target("avx2"))) inline void mul_hi_lo_avx2(__m256i c, __m256i m, __m256i* lo, __m256i* hi) {
  const __m256i even = _mm256_mul_epu32(c, m);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(c, 32), m);
  *lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

__attribute__((target("avx2"))) inline __m256 to_uniform_avx2(__m256i words) {
  return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(words, 8)), _mm256_set1_ps(1.0f / 16777216.0f));
}

__attribute__((target("avx2"))) void avx2(uint64_t seed, uint64_t offset, uint64_t first_block, int64_t blocks,
                                          float* out) {
  constexpr int kLanes = 8;
  const uint64_t step = offset >> 2;
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(kPhiloxM0));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int>(kPhiloxM1));
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const int64_t groups = simd_groups(first_block, blocks, kLanes);
  for (int64_t g = 0; g < groups; ++g) {
    const uint64_t block = first_block + static_cast<uint64_t>(g * kLanes);
    __m256i c0 = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(step)));
    __m256i c1 = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(step >> 32)));
    __m256i c2 = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(block))), lane);
    __m256i c3 = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(block >> 32)));
    uint32_t key0 = static_cast<uint32_t>(seed), key1 = static_cast<uint32_t>(seed >> 32);
    for (int round = 0; round < 10; ++round) {
      __m256i lo0, hi0, lo1, hi1;
      mul_hi_lo_avx2(c0, m0, &lo0, &hi0);
      mul_hi_lo_avx2(c2, m1, &lo1, &hi1);
      c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), _mm256_set1_epi32(static_cast<int>(key0)));
      c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), _mm256_set1_epi32(static_cast<int>(key1)));
      c1 = lo1;
      c3 = lo0;
      key0 += kPhiloxW0;
      key1 += kPhiloxW1;
    }
    // Words (c0, c1, c2, c3) of blocks 0..7 -> element order: a 4x8 transpose.
    const __m256 u0 = to_uniform_avx2(c0), u1 = to_uniform_avx2(c1);
    const __m256 u2 = to_uniform_avx2(c2), u3 = to_uniform_avx2(c3);
    const __m256 a = _mm256_unpacklo_ps(u0, u1);  // blocks 0, 1 | 4, 5: words 0 and 1
    const __m256 b = _mm256_unpackhi_ps(u0, u1);  // blocks 2, 3 | 6, 7
    const __m256 c = _mm256_unpacklo_ps(u2, u3);  // words 2 and 3
    const __m256 d = _mm256_unpackhi_ps(u2, u3);
    const __m256 e = _mm256_shuffle_ps(a, c, 0x44);  // block 0 | block 4
    const __m256 f = _mm256_shuffle_ps(a, c, 0xEE);  // block 1 | block 5
    const __m256 h = _mm256_shuffle_ps(b, d, 0x44);  // block 2 | block 6
    const __m256 i = _mm256_shuffle_ps(b, d, 0xEE);  // block 3 | block 7
    float* o = out + 4 * g * kLanes;
    _mm256_storeu_ps(o, _mm256_permute2f128_ps(e, f, 0x20));
    _mm256_storeu_ps(o + 8, _mm256_permute2f128_ps(h, i, 0x20));
    _mm256_storeu_ps(o + 16, _mm256_permute2f128_ps(e, f, 0x31));
    _mm256_storeu_ps(o + 24, _mm256_permute2f128_ps(h, i, 0x31));
  }
  const int64_t done = groups * kLanes;
  portable(seed, offset, first_block + static_cast<uint64_t>(done), blocks - done, out + 4 * done);
}

__attribute__((target("avx512f"))) inline void mul_hi_lo_avx512(__m512i c, __m512i m, __m512i* lo, __m512i* hi) {
  const __m512i even = _mm512_mul_epu32(c, m);
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(c, 32), m);
  *lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
  *hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
}

__attribute__((target("avx512f"))) inline __m512 to_uniform_avx512(__m512i words) {
  return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(words, 8)), _mm512_set1_ps(1.0f / 16777216.0f));
}

__attribute__((target("avx512f"))) void avx512(uint64_t seed, uint64_t offset, uint64_t first_block, int64_t blocks,
                                               float* out) {
  constexpr int kLanes = 16;
  const uint64_t step = offset >> 2;
  const __m512i m0 = _mm512_set1_epi32(static_cast<int>(kPhiloxM0));
  const __m512i m1 = _mm512_set1_epi32(static_cast<int>(kPhiloxM1));
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  // Transpose indices: interleave words (0, 1) and (2, 3) of blocks 0..7 and 8..15, then pairs of them.
  const __m512i low_pairs = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i high_pairs = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  const __m512i first_quads = _mm512_setr_epi64(0, 8, 1, 9, 2, 10, 3, 11);
  const __m512i second_quads = _mm512_setr_epi64(4, 12, 5, 13, 6, 14, 7, 15);
  const int64_t groups = simd_groups(first_block, blocks, kLanes);
  for (int64_t g = 0; g < groups; ++g) {
    const uint64_t block = first_block + static_cast<uint64_t>(g * kLanes);
    __m512i c0 = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(step)));
    __m512i c1 = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(step >> 32)));
    __m512i c2 = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(block))), lane);
    __m512i c3 = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(block >> 32)));
    uint32_t key0 = static_cast<uint32_t>(seed), key1 = static_cast<uint32_t>(seed >> 32);
    for (int round = 0; round < 10; ++round) {
      __m512i lo0, hi0, lo1, hi1;
      mul_hi_lo_avx512(c0, m0, &lo0, &hi0);
      mul_hi_lo_avx512(c2, m1, &lo1, &hi1);
      c0 = _mm512_xor_si512(_mm512_xor_si512(hi1, c1), _mm512_set1_epi32(static_cast<int>(key0)));
      c2 = _mm512_xor_si512(_mm512_xor_si512(hi0, c3), _mm512_set1_epi32(static_cast<int>(key1)));
      c1 = lo1;
      c3 = lo0;
      key0 += kPhiloxW0;
      key1 += kPhiloxW1;
    }
    const __m512 u0 = to_uniform_avx512(c0), u1 = to_uniform_avx512(c1);
    const __m512 u2 = to_uniform_avx512(c2), u3 = to_uniform_avx512(c3);
    // Words 0 and 1 of blocks 0..7 as pairs, and of blocks 8..15; the same for words 2 and 3.
    const __m512d w01_low = _mm512_castps_pd(_mm512_permutex2var_ps(u0, low_pairs, u1));
    const __m512d w01_high = _mm512_castps_pd(_mm512_permutex2var_ps(u0, high_pairs, u1));
    const __m512d w23_low = _mm512_castps_pd(_mm512_permutex2var_ps(u2, low_pairs, u3));
    const __m512d w23_high = _mm512_castps_pd(_mm512_permutex2var_ps(u2, high_pairs, u3));
    float* o = out + 4 * g * kLanes;
    _mm512_storeu_ps(o, _mm512_castpd_ps(_mm512_permutex2var_pd(w01_low, first_quads, w23_low)));
    _mm512_storeu_ps(o + 16, _mm512_castpd_ps(_mm512_permutex2var_pd(w01_low, second_quads, w23_low)));
    _mm512_storeu_ps(o + 32, _mm512_castpd_ps(_mm512_permutex2var_pd(w01_high, first_quads, w23_high)));
    _mm512_storeu_ps(o + 48, _mm512_castpd_ps(_mm512_permutex2var_pd(w01_high, second_quads, w23_high)));
  }
  const int64_t done = groups * kLanes;
  portable(seed, offset, first_block + static_cast<uint64_t>(done), blocks - done, out + 4 * done);
}

#else  // no x86 SIMD versions in this build

bool avx2_supported() { return false; }
bool avx512_supported() { return false; }
void avx2(uint64_t seed, uint64_t offset, uint64_t first_block, int64_t blocks, float* out) {
  portable(seed, offset, first_block, blocks, out);
}
void avx512(uint64_t seed, uint64_t offset, uint64_t first_block, int64_t blocks, float* out) {
  portable(seed, offset, first_block, blocks, out);
}

#endif

}  // namespace philox_versions

namespace {

using BlocksFn = void (*)(uint64_t, uint64_t, uint64_t, int64_t, float*);

struct Chosen {
  BlocksFn fn;
  const char* name;
};

const Chosen& chosen() {
  static const Chosen version = [] {
    if (philox_versions::avx512_supported()) return Chosen{&philox_versions::avx512, "avx512"};
    if (philox_versions::avx2_supported()) return Chosen{&philox_versions::avx2, "avx2"};
    return Chosen{&philox_versions::portable, "portable"};
  }();
  return version;
}

}  // namespace

void philox_uniform_blocks(uint64_t seed, uint64_t offset, uint64_t first_block, int64_t blocks, float* out) {
  chosen().fn(seed, offset, first_block, blocks, out);
}

const char* philox_cpu_version() { return chosen().name; }

}  // namespace picnn
