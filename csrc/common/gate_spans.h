// Index arithmetic of the CUDA gate kernels, kept free of CUDA so that the C++ test (tests/cpp/test_ops.cpp)
// checks it on the CPU: every element of a tensor of any size lands in exactly one span, whatever the
// alignment of its rows to the vector width.
//
// The kernels vectorise over the flat buffer with aligned packs of VEC elements (16 bytes), whatever H*W or
// K is. A run of elements [begin, end) that does not start or end on a pack boundary is split into a scalar
// head, whole packs, and a scalar tail; the packs of two neighbouring runs never overlap, since a pack that
// straddles a boundary belongs to neither run's interior (its elements go to the heads and tails).
#pragma once

#include <cstdint>

#include "philox.h"  // PICNN_HOST_DEVICE

namespace picnn {

struct PackSpan {
  int64_t head_end;     // scalar elements [begin, head_end)
  int64_t first_pack;   // whole packs [first_pack, last_pack): elements [first_pack * VEC, last_pack * VEC)
  int64_t last_pack;
  int64_t tail_begin;   // scalar elements [tail_begin, end)
};

PICNN_HOST_DEVICE int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
PICNN_HOST_DEVICE int64_t max64(int64_t a, int64_t b) { return a < b ? b : a; }

// The split of the run [begin, end) (begin <= end) into a head, whole packs of `vec` elements and a tail.
PICNN_HOST_DEVICE PackSpan pack_span(int64_t begin, int64_t end, int64_t vec) {
  PackSpan span;
  span.first_pack = (begin + vec - 1) / vec;
  span.last_pack = end / vec;
  if (span.last_pack < span.first_pack) span.last_pack = span.first_pack;  // no whole pack inside the run
  span.head_end = min64(end, span.first_pack * vec);
  span.tail_begin = max64(span.head_end, span.last_pack * vec);
  return span;
}

// Channels-last (B, S, K) forward: the work of one block is sample b's positions [s_begin, s_end), so that the
// block draws the K mask values of sample b once and reads them from shared memory. Positions per block:
// about `target` elements, but at least one position, and few enough that the span stays below 2^31
// elements (its local offsets are 32-bit).
struct PositionChunks {
  int64_t positions_per_chunk;
  int64_t chunks_per_sample;
};

PICNN_HOST_DEVICE PositionChunks position_chunks(int64_t S, int64_t K, int64_t target) {
  PositionChunks plan;
  const int64_t k = max64(K, 1);
  int64_t per = max64(1, min64(max64(S, 1), target / k));
  while (per > 1 && per * k > (int64_t(1) << 30)) per /= 2;
  plan.positions_per_chunk = per;
  plan.chunks_per_sample = S == 0 ? 0 : (S + per - 1) / per;
  return plan;
}

// Row bundles of the channels-first kernels: `group` lanes (a power of two up to 32) share one row, so a warp
// holds 32 / group rows, rows [base, base + 32 / group) with base a multiple of 32 / group. The uniform of row
// r is word r % 4 of Philox block r / 4. The lane that computes a Philox block for the warp is the group
// leader of the first row of that block inside the bundle; every lane reads its row's four words from it.
PICNN_HOST_DEVICE int philox_source_lane(int64_t row, int64_t base, int group) {
  const int64_t first_row_of_block = max64(row & ~int64_t(3), base);
  return static_cast<int>((first_row_of_block - base) * group);
}

PICNN_HOST_DEVICE bool computes_philox_block(int64_t row, int64_t base, int lane, int group) {
  return lane % group == 0 && ((row & 3) == 0 || row == base);
}

// The smallest power-of-two group of lanes (up to a warp) that covers a row's packs in one sweep.
PICNN_HOST_DEVICE int group_size_for(int64_t packs_per_row) {
  int group = 1;
  while (group < 32 && group < packs_per_row) group *= 2;
  return group;
}

// Lanes per row of the channels-first kernels: the smallest power-of-two group (up to a warp) that leaves each
// lane at most `unroll` packs of the row, so that a short row (7x7, 14x14) is one step in which a lane issues
// all its loads before its stores (several in flight), instead of one pack at a time over a wider group of
// which part idles.
PICNN_HOST_DEVICE int rows_group_for(int64_t packs_per_row, int unroll) {
  return group_size_for((packs_per_row + unroll - 1) / unroll);
}

}  // namespace picnn
