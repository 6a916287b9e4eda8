// C++ test of the ops through the dispatcher, as a libtorch user calls them (run by ctest). Each check is
// against a computation with plain ATen ops; the program exits non-zero on the first failure.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "common/gate_spans.h"
#include "common/philox.h"
#include "cpu/philox_cpu.h"

namespace {

int failures = 0;

void expect(bool condition, const char* what) {
  std::printf("%s: %s\n", condition ? "ok  " : "FAIL", what);
  if (!condition) ++failures;
}

using GateFn = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, bool,
                                                  const std::optional<at::Tensor>&, std::optional<at::Generator>,
                                                  int64_t);
using GateBackwardFn = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                          int64_t);
using SampleFn = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const std::optional<at::Tensor>&,
                                                    std::optional<at::Generator>);

template <typename Fn>
c10::TypedOperatorHandle<Fn> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Fn>();
}

void test_philox_known_answer() {
  // Random123 known-answer vector: counter 0, key 0.
  const picnn::PhiloxBlock out = picnn::philox4x32_10(picnn::PhiloxBlock{{0, 0, 0, 0}}, 0, 0);
  expect(out.v[0] == 0x6627e8d5u && out.v[1] == 0xe169c58du && out.v[2] == 0xbc57ac4cu && out.v[3] == 0x9b00dbd8u,
         "Philox4x32-10 known answer");
}

// Every vectorised version of the CPU draw that this CPU runs gives, element for element, philox_block's
// words: any seed and offset, block counts that are not a multiple of the lanes, and groups of blocks whose
// counter's low word wraps (2^32 blocks are 2^34 elements, too many for a tensor in a test).
void test_philox_cpu_versions() {
  using Version = void (*)(uint64_t, uint64_t, uint64_t, int64_t, float*);
  struct Named {
    const char* name;
    Version fn;
    bool runs;
  };
  const Named versions[] = {{"portable", &picnn::philox_versions::portable, true},
                            {"avx2", &picnn::philox_versions::avx2, picnn::philox_versions::avx2_supported()},
                            {"avx512", &picnn::philox_versions::avx512, picnn::philox_versions::avx512_supported()}};
  const uint64_t seeds[] = {0, 42, (uint64_t{1} << 40) + 7, (uint64_t{1} << 63) - 1, ~uint64_t{0}};
  const uint64_t offsets[] = {0, 8, (uint64_t{1} << 35) + 4, (uint64_t{1} << 63) + 12};
  const uint64_t first_blocks[] = {0, 3, (uint64_t{1} << 32) - 21, (uint64_t{1} << 32) - 16, (uint64_t{1} << 33) + 5};
  const int64_t counts[] = {0, 1, 7, 8, 16, 37, 128};
  for (const Named& version : versions) {
    if (!version.runs) {
      std::printf("skip: Philox CPU version %s (this CPU lacks it)\n", version.name);
      continue;
    }
    int mismatches = 0;
    for (uint64_t seed : seeds) {
      for (uint64_t offset : offsets) {
        for (uint64_t first : first_blocks) {
          for (int64_t count : counts) {
            std::vector<float> out(4 * count + 1, -1.0f);
            version.fn(seed, offset, first, count, out.data());
            for (int64_t j = 0; j < count; ++j) {
              const picnn::PhiloxBlock words = picnn::philox_block(seed, offset, first + j);
              for (int w = 0; w < 4; ++w) mismatches += out[4 * j + w] != picnn::word_to_uniform(words.v[w]);
            }
            mismatches += out[4 * count] != -1.0f;  // nothing written past the last block
          }
        }
      }
    }
    const std::string what = std::string("Philox CPU version ") + version.name + " equals philox_block";
    expect(mismatches == 0, what.c_str());
  }
}

void test_gate_forward_and_backward(at::MemoryFormat format) {
  const auto gate = op<GateFn>("picnn::bernoulli_gate");
  const auto backward = op<GateBackwardFn>("picnn::bernoulli_gate_backward");
  const at::Tensor x = at::randn({3, 20, 5, 7}).contiguous(format);
  const at::Tensor p = at::rand({3, 20});
  const at::Tensor noise = at::rand({3, 20});
  const auto [y, mask] = gate.call(x, p, true, noise, std::nullopt, 1);
  const at::Tensor expected_mask = (noise < p).to(at::kFloat);
  expect(at::equal(mask, expected_mask), "mask = noise < p");
  expect(at::equal(y, x * expected_mask.view({3, 20, 1, 1})), "y = x * mask");
  expect(y.is_contiguous(format), "y keeps the memory format of x");
  const at::Tensor grad_y = at::randn_like(x);
  const auto [grad_x, grad_p] = backward.call(grad_y, x, mask, 1);
  expect(at::equal(grad_x, grad_y * expected_mask.view({3, 20, 1, 1})), "grad_x = grad_y * mask");
  expect(at::allclose(grad_p, (grad_y * x).sum({2, 3}), 1e-5, 1e-5), "grad_p = sum of grad_y * x");
}

void test_sample_class() {
  const auto sample = op<SampleFn>("picnn::sample_class");
  const at::Tensor logits = at::randn({50, 7}, at::kDouble);
  const at::Tensor u = at::rand({50}, at::kDouble);
  const auto [onehot, index] = sample.call(logits, u, std::nullopt);
  const at::Tensor cdf = at::softmax(logits, 1).cumsum(1);
  const at::Tensor expected = (cdf <= u.unsqueeze(1)).sum(1).clamp_max(6);
  expect(at::equal(index, expected), "index is the inverse CDF of u");
  expect(at::equal(onehot, at::one_hot(index, 7).to(at::kDouble)), "onehot is exact");
}

// A libtorch user differentiates through the ops without Python: the C++ autograd of csrc/autograd/.
void test_autograd_without_python() {
  const auto gate = op<GateFn>("picnn::bernoulli_gate");
  const auto sample = op<SampleFn>("picnn::sample_class");
  const at::Tensor x = at::randn({4, 6, 3, 3}, at::kDouble).requires_grad_(true);
  const at::Tensor p = at::rand({4, 6}, at::kDouble).requires_grad_(true);
  const at::Tensor noise = at::rand({4, 6}, at::kDouble);
  const auto [y, mask] = gate.call(x, p, true, noise, std::nullopt, 1);
  expect(y.requires_grad() && !mask.requires_grad(), "y has a gradient, the mask none");
  const at::Tensor grad_y = at::randn_like(y);
  y.backward(grad_y);
  expect(at::allclose(x.grad(), grad_y * mask.view({4, 6, 1, 1}), 1e-12, 1e-12), "x.grad = grad_y * mask");
  expect(at::allclose(p.grad(), (grad_y * x.detach()).sum({2, 3}), 1e-12, 1e-12), "p.grad = sum of grad_y * x");

  const at::Tensor logits = at::randn({5, 7}, at::kDouble).requires_grad_(true);
  const at::Tensor weight = at::randn({5, 7}, at::kDouble);
  const auto [onehot, index] = sample.call(logits, at::rand({5}, at::kDouble), std::nullopt);
  (onehot * weight).sum().backward();
  const at::Tensor pi = at::softmax(logits.detach(), 1);
  const at::Tensor expected = pi * (weight - (pi * weight).sum(1, true));
  expect(at::allclose(logits.grad(), expected, 1e-12, 1e-12), "logits.grad is the softmax backward");
}

void test_bad_input_is_rejected() {
  const auto gate = op<GateFn>("picnn::bernoulli_gate");
  bool raised = false;
  try {
    gate.call(at::randn({2, 3, 4}), at::full({2, 3}, 1.5), true, std::nullopt, std::nullopt, 1);
  } catch (const c10::ValueError& error) {
    raised = std::string(error.what()).find("p must hold probabilities") != std::string::npos;
  }
  expect(raised, "p outside [0, 1] raises a ValueError naming p");
}

}  // namespace

// The index arithmetic of the CUDA gate kernels (common/gate_spans.h), run here as the kernels run it: every
// element of every row lands in exactly one head, pack or tail, whatever S, K and the vector width; position
// chunks cover every position once with runs below 2^31 elements; every lane of a warp reads its row's
// uniforms from a lane that computes that row's Philox block.
void test_gate_spans() {
  bool covered = true, packs_inside = true;
  for (int64_t vec : {1, 2, 4, 8}) {
    for (int64_t S : {1, 2, 3, 5, 7, 8, 9, 16, 49, 196, 197}) {
      const int64_t rows = 11;
      std::vector<int> count(rows * S, 0);
      for (int64_t row = 0; row < rows; ++row) {
        const int64_t begin = row * S, end = begin + S;
        const picnn::PackSpan span = picnn::pack_span(begin, end, vec);
        for (int64_t e = begin; e < span.head_end; ++e) ++count[e];
        for (int64_t e = span.tail_begin; e < end; ++e) ++count[e];
        for (int64_t pack = span.first_pack; pack < span.last_pack; ++pack) {
          packs_inside = packs_inside && pack * vec >= begin && (pack + 1) * vec <= end;
          for (int64_t e = pack * vec; e < (pack + 1) * vec; ++e) ++count[e];
        }
      }
      for (int c : count) covered = covered && c == 1;
    }
  }
  expect(covered, "gate spans: every element of every row in exactly one head, pack or tail");
  expect(packs_inside, "gate spans: whole packs lie inside their row");

  bool chunks_cover = true, runs_fit = true;
  const int64_t shapes[][2] = {{1, 1}, {49, 2048}, {197, 768}, {3136, 64}, {7, 37}, {3, (int64_t{1} << 29) + 1}};
  for (const auto& shape : shapes) {
    const int64_t S = shape[0], K = shape[1];
    const picnn::PositionChunks plan = picnn::position_chunks(S, K, 16384);
    std::vector<int> count(S, 0);
    for (int64_t chunk = 0; chunk < plan.chunks_per_sample; ++chunk) {
      const int64_t s_begin = chunk * plan.positions_per_chunk;
      const int64_t s_end = std::min(S, s_begin + plan.positions_per_chunk);
      for (int64_t s = s_begin; s < s_end; ++s) ++count[s];
      runs_fit = runs_fit && (s_end - s_begin) * K < (int64_t{1} << 31);
    }
    for (int c : count) chunks_cover = chunks_cover && c == 1;
  }
  expect(chunks_cover && picnn::position_chunks(0, 5, 16384).chunks_per_sample == 0,
         "gate spans: position chunks cover every position once");
  expect(runs_fit, "gate spans: a chunk's run of elements stays below 2^31 (32-bit offsets)");

  bool lanes_ok = true;
  for (int group = 1; group <= 32; group *= 2) {
    const int64_t rows_per_warp = 32 / group;
    for (int64_t base = 0; base < 64; base += rows_per_warp) {
      for (int lane = 0; lane < 32; ++lane) {
        const int64_t row = base + lane / group;
        const int source = picnn::philox_source_lane(row, base, group);
        const int64_t source_row = base + source / group;
        lanes_ok = lanes_ok && source >= 0 && source < 32 &&
                   picnn::computes_philox_block(source_row, base, source, group) && (source_row >> 2) == (row >> 2);
      }
    }
  }
  expect(lanes_ok, "gate spans: each lane's Philox words come from a lane that computes its row's block");

  // rows_group_for: the fewest lanes (a power of two, at most a warp) that leave each lane at most 4 packs.
  bool groups_ok = true;
  for (int64_t packs = 0; packs <= 1000; ++packs) {
    const int group = picnn::rows_group_for(packs, 4);
    const bool power = group >= 1 && group <= 32 && (group & (group - 1)) == 0;
    const bool enough = group == 32 || (packs + group - 1) / group <= 4;
    const bool fewest = group == 1 || (packs + group / 2 - 1) / (group / 2) > 4;
    groups_ok = groups_ok && power && enough && fewest;
  }
  expect(groups_ok, "gate spans: rows_group_for gives each lane at most 4 packs with the fewest lanes");
}

int main() {
  test_philox_known_answer();
  test_philox_cpu_versions();
  test_gate_spans();
  test_gate_forward_and_backward(at::MemoryFormat::Contiguous);
  test_gate_forward_and_backward(at::MemoryFormat::ChannelsLast);
  test_sample_class();
  test_autograd_without_python();
  test_bad_input_is_rejected();
  std::printf("%d failure(s)\n", failures);
  return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
