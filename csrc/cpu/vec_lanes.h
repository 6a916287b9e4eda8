// Loads and stores of any supported dtype as vectors of its accumulation type (float for
// float16/bfloat16/float32, double for float64), so that each CPU kernel has one vectorised loop
// for all four dtypes.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <array>
#include <type_traits>

namespace picnn {

template <typename scalar_t>
using opmath_t = at::opmath_type<scalar_t>;

template <typename scalar_t>
struct VecLanes {
  static constexpr bool kReduced = at::vec::is_reduced_floating_point_v<scalar_t>;
  using Vec = at::vec::Vectorized<opmath_t<scalar_t>>;
  // Reduced types load twice as many elements per instruction and widen them into two float vectors.
  static constexpr int kParts = kReduced ? 2 : 1;
  static constexpr int64_t kStep = kParts * Vec::size();
  using Parts = std::array<Vec, kParts>;

  static Parts load(const scalar_t* src) {
    if constexpr (kReduced) {
      auto [lo, hi] = at::vec::convert_to_float<scalar_t>(at::vec::Vectorized<scalar_t>::loadu(src));
      return {lo, hi};
    } else {
      return {Vec::loadu(src)};
    }
  }

  static void store(scalar_t* dst, const Parts& v) {
    if constexpr (kReduced) {
      at::vec::convert_from_float<scalar_t>(v[0], v[1]).store(dst);
    } else {
      v[0].store(dst);
    }
  }

  // kStep values of the accumulation type, already widened (e.g. a row of the scale matrix).
  static Parts load_opmath(const opmath_t<scalar_t>* src) {
    Parts v;
    for (int j = 0; j < kParts; ++j) v[j] = Vec::loadu(src + j * Vec::size());
    return v;
  }
};

}  // namespace picnn
