// lane_sum: the sum of term(i) over a row of n, in independent partial sums when the row is long.
//
// Why: a reduction written as `#pragma omp simd reduction(+ : sum)` keeps one vector accumulator, so every add
// waits for the previous one (4 cycles of latency for 8 floats with AVX2): a long row's sum, or a dot product,
// then runs at a fraction of the rate its loads allow. From kLongRow elements on, the sum is kept in kLanes
// partial sums (four AVX2 vectors of float, eight of double: four chains in flight) that fold as a tree.
// Shorter rows (a 7x7 map's 49, a controller's hidden width of 16-128) keep the one accumulator: the lanes'
// set-up, scalar tail and fold would cost more than the chain they save.
//
// Include it from a PICNN_MULTIVERSION function (multiversion.h): it is inlined there, and compiled once for
// each target of the clone. term(i) may have side effects (relu_mean_ writes x[i] in it); each i is visited once.
#pragma once

#include <cstdint>

namespace picnn {

template <typename scalar_t, typename Term>
__attribute__((always_inline)) inline scalar_t lane_sum(int64_t n, const Term& term) {
  constexpr int64_t kLanes = 32, kLongRow = 64;
  if (n < kLongRow) {
    scalar_t sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < n; ++i) sum += term(i);
    return sum;
  }
  scalar_t acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
#pragma omp simd
    for (int64_t j = 0; j < kLanes; ++j) acc[j] += term(i + j);
  }
  scalar_t tail = 0;
  for (; i < n; ++i) tail += term(i);
  for (int64_t width = kLanes / 2; width > 0; width /= 2) {
#pragma omp simd
    for (int64_t j = 0; j < width; ++j) acc[j] += acc[j + width];
  }
  return acc[0] + tail;
}

}  // namespace picnn
