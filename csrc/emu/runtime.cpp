// The emulated launch (cuda_emu.h): blockDim.x * y * z real threads run the blocks of the grid one after the
// other. __syncthreads and the warp operations are rendezvous under a mutex and condition variable (which
// ThreadSanitizer understands as synchronisation), with three checks that turn a divergence into an error naming
// the kernel: every participant waits at the same call site, no participant has left the kernel, and the wait
// ends within PICNN_EMU_TIMEOUT seconds (default 20).
#include "cuda_emu.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <ATen/cuda/CUDAContext.h>

namespace picnn_emu {

thread_local ThreadCtx ctx;

const DeviceProps* device_props() {
  static const DeviceProps props{1, 227 * 1024};
  return &props;
}

namespace {

struct Abort {};

struct Warp {
  std::mutex mu;
  std::condition_variable cv;
  unsigned arrived = 0, op_mask = 0, exited = 0, lanes = 0;
  bool reading = false;
  int readers = 0;
  uint64_t gen = 0;
  const char* file = nullptr;
  const char* op = nullptr;
  int line = 0;
  unsigned char slots[32][16];
};

struct Launch {
  const char* kernel;
  int nthreads = 0;
  std::chrono::milliseconds timeout{20000};
  std::atomic<bool> abort{false};
  std::mutex error_mu;
  std::string error;
  std::vector<Warp> warps;
  // the block barrier
  std::mutex mu;
  std::condition_variable cv;
  int arrived = 0, exited = 0;
  uint64_t gen = 0;
  const char* file = nullptr;
  int line = 0;
  // the barrier between blocks (internal, not a __syncthreads)
  int between = 0;
  uint64_t between_gen = 0;

  explicit Launch(int warps_) : warps(warps_) {}
};

thread_local Launch* current = nullptr;
thread_local int linear_id = 0;

void wake_all(Launch& L) {
  for (Warp& w : L.warps) {
    std::lock_guard<std::mutex> lock(w.mu);
    w.cv.notify_all();
  }
  std::lock_guard<std::mutex> lock(L.mu);
  L.cv.notify_all();
}

// Records the first error of the launch and stops it; the caller holds no lock.
[[noreturn]] void fail(Launch& L, const std::string& message) {
  {
    std::lock_guard<std::mutex> lock(L.error_mu);
    if (L.error.empty()) {
      L.error = std::string("kernel ") + L.kernel + ", block (" + std::to_string(ctx.block_idx.x) + "," +
                std::to_string(ctx.block_idx.y) + "), thread (" + std::to_string(ctx.thread_idx.x) + "," +
                std::to_string(ctx.thread_idx.y) + "): " + message;
    }
  }
  L.abort = true;
  wake_all(L);
  throw Abort{};
}

std::string site(const char* file, int line) { return std::string(file) + ":" + std::to_string(line); }

std::string hex(unsigned v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

// The lanes of warp w that lie inside the block.
unsigned warp_lanes(int w, int nthreads) {
  const int n = std::min(32, nthreads - 32 * w);
  return n == 32 ? 0xffffffffu : (1u << n) - 1u;
}

}  // namespace

void warp_rendezvous(unsigned mask, const char* op, const char* file, int line, const void* mine, size_t n,
                     SlotReader read, void* user) {
  Launch& L = *current;
  const int lane = linear_id % 32;
  Warp& w = L.warps[linear_id / 32];
  const unsigned bit = 1u << lane;
  std::string problem;
  {
    std::unique_lock<std::mutex> lock(w.mu);
    const auto deadline = std::chrono::steady_clock::now() + L.timeout;
    // the previous operation's lanes are still reading their results
    while (w.reading && !L.abort) {
      if (w.cv.wait_until(lock, deadline) == std::cv_status::timeout) break;
    }
    if (L.abort) throw Abort{};
    if (w.reading) {
      problem = std::string(op) + " at " + site(file, line) + ": the warp's previous operation never completed";
    } else if (!(mask & bit)) {
      problem = std::string(op) + " at " + site(file, line) + " called by lane " + std::to_string(lane) +
                " outside its mask " + hex(mask);
    } else if (mask & ~w.lanes) {
      problem = std::string(op) + " at " + site(file, line) + ": mask " + hex(mask) + " names lanes outside the block";
    } else if (w.arrived != 0 && (w.op_mask != mask || w.line != line || std::strcmp(w.file, file) != 0 ||
                                  std::strcmp(w.op, op) != 0)) {
      problem = std::string("divergent warp operation: lane ") + std::to_string(lane) + " reached " + op + " at " +
                site(file, line) + " (mask " + hex(mask) + ") while lanes " + hex(w.arrived) + " wait at " + w.op +
                " at " + site(w.file, w.line) + " (mask " + hex(w.op_mask) + ")";
    } else if (mask & w.exited) {
      problem = std::string("divergent warp operation: ") + op + " at " + site(file, line) + " with mask " +
                hex(mask) + ", but lanes " + hex(mask & w.exited) + " have left the kernel";
    } else {
      if (w.arrived == 0) {
        w.op_mask = mask;
        w.file = file;
        w.line = line;
        w.op = op;
      }
      std::memcpy(w.slots[lane], mine, n);
      w.arrived |= bit;
      const uint64_t gen = w.gen;
      if (w.arrived == mask) {
        w.reading = true;
        w.readers = __builtin_popcount(mask);
        w.cv.notify_all();
      } else {
        while (!(w.reading && w.gen == gen) && !L.abort) {
          if (w.cv.wait_until(lock, deadline) == std::cv_status::timeout) break;
        }
        if (L.abort) throw Abort{};
        if (!(w.reading && w.gen == gen)) {
          problem = std::string("divergent warp operation (deadlock): ") + op + " at " + site(file, line) +
                    " with mask " + hex(mask) + ": lanes " + hex(mask & ~w.arrived) + " never arrived";
        }
      }
      if (problem.empty()) {
        read(w.slots, lane, user);
        if (--w.readers == 0) {
          w.reading = false;
          w.arrived = 0;
          ++w.gen;
          w.cv.notify_all();
        }
        return;
      }
    }
  }
  fail(L, problem);
}

void syncthreads(const char* file, int line) {
  Launch& L = *current;
  std::string problem;
  {
    std::unique_lock<std::mutex> lock(L.mu);
    if (L.abort) throw Abort{};
    if (L.arrived != 0 && (L.line != line || std::strcmp(L.file, file) != 0)) {
      problem = "divergent __syncthreads: a thread reached the barrier at " + site(file, line) + " while " +
                std::to_string(L.arrived) + " threads wait at " + site(L.file, L.line);
    } else {
      if (L.arrived == 0) {
        L.file = file;
        L.line = line;
      }
      const uint64_t gen = L.gen;
      if (++L.arrived == L.nthreads - L.exited) {
        if (L.exited > 0) {
          problem = "divergent __syncthreads at " + site(file, line) + ": " + std::to_string(L.exited) +
                    " threads of the block left the kernel without reaching it";
        } else {
          L.arrived = 0;
          ++L.gen;
          L.cv.notify_all();
          return;
        }
      } else {
        const auto deadline = std::chrono::steady_clock::now() + L.timeout;
        while (L.gen == gen && !L.abort) {
          if (L.cv.wait_until(lock, deadline) == std::cv_status::timeout) break;
        }
        if (L.abort) throw Abort{};
        if (L.gen == gen) {
          problem = "__syncthreads at " + site(file, line) + " (deadlock): " +
                    std::to_string(L.nthreads - L.arrived) + " threads never arrived";
        } else {
          return;
        }
      }
    }
  }
  fail(L, problem);
}

void assert_fail(const char* assertion, const char* file, unsigned int line, const char* function) {
  std::fflush(stdout);
  fail(*current, std::string("device-side assert triggered: ") + file + ":" + std::to_string(line) + ": " +
                     function + ": Assertion `" + assertion + "` failed.");
}

namespace {

// A thread leaves the kernel: a barrier or warp operation that waits for it now never completes.
void leave(Launch& L) {
  const int lane = linear_id % 32;
  Warp& w = L.warps[linear_id / 32];
  std::string problem;
  {
    std::lock_guard<std::mutex> lock(w.mu);
    w.exited |= 1u << lane;
    if (w.arrived != 0 && !w.reading && (w.op_mask & (1u << lane))) {
      problem = std::string("divergent warp operation: lane ") + std::to_string(lane) + " left the kernel while lanes " +
                hex(w.arrived) + " wait at " + w.op + " at " + site(w.file, w.line) + " (mask " + hex(w.op_mask) + ")";
    }
  }
  if (problem.empty()) {
    std::lock_guard<std::mutex> lock(L.mu);
    ++L.exited;
    if (L.arrived > 0 && L.arrived == L.nthreads - L.exited) {
      problem = "divergent __syncthreads at " + site(L.file, L.line) + ": " + std::to_string(L.exited) +
                " threads of the block left the kernel without reaching it";
    }
  }
  if (!problem.empty()) fail(L, problem);
}

// All threads meet between two blocks; the last one resets the per-block state.
bool between_blocks(Launch& L) {
  std::unique_lock<std::mutex> lock(L.mu);
  if (L.abort) return false;
  const uint64_t gen = L.between_gen;
  if (++L.between == L.nthreads) {
    L.between = 0;
    L.exited = 0;
    L.arrived = 0;
    for (Warp& w : L.warps) {
      std::lock_guard<std::mutex> wl(w.mu);
      w.exited = 0;
    }
    ++L.between_gen;
    L.cv.notify_all();
    return true;
  }
  L.cv.wait(lock, [&] { return L.between_gen != gen || L.abort; });
  return !L.abort;
}

std::mutex launch_mu;  // one launch at a time: the static __shared__ arrays are the running block's

}  // namespace

void launch(const char* kernel, dim3 grid, dim3 block, size_t shared_bytes, void (*body)(void*), void* user) {
  const long nthreads = static_cast<long>(block.x) * block.y * block.z;
  if (nthreads < 1 || nthreads > 1024 || block.z > 64) {
    throw std::runtime_error(std::string("kernel ") + kernel + ": invalid block size " + std::to_string(nthreads));
  }
  if (grid.x < 1 || grid.y < 1 || grid.z < 1 || grid.y > 65535 || grid.z > 65535) {
    throw std::runtime_error(std::string("kernel ") + kernel + ": invalid grid");
  }
  if (shared_bytes > device_props()->sharedMemPerBlockOptin) {
    throw std::runtime_error(std::string("kernel ") + kernel + ": " + std::to_string(shared_bytes) +
                             " bytes of dynamic shared memory exceed the device's limit");
  }
  std::lock_guard<std::mutex> serial(launch_mu);
  const int warps = static_cast<int>((nthreads + 31) / 32);
  Launch L(warps);
  L.kernel = kernel;
  L.nthreads = static_cast<int>(nthreads);
  if (const char* t = std::getenv("PICNN_EMU_TIMEOUT")) L.timeout = std::chrono::milliseconds(long(std::atof(t) * 1000));
  for (int w = 0; w < warps; ++w) L.warps[w].lanes = warp_lanes(w, L.nthreads);
  // exactly shared_bytes, so that AddressSanitizer sees an access one past the end
  unsigned char* dyn = shared_bytes > 0 ? static_cast<unsigned char*>(::operator new[](shared_bytes, std::align_val_t(16))) : nullptr;
  struct Free {
    unsigned char* p;
    ~Free() { if (p) ::operator delete[](p, std::align_val_t(16)); }
  } free_dyn{dyn};
  auto worker = [&](int t) {
    current = &L;
    linear_id = t;
    ctx.block_dim = block;
    ctx.grid_dim = grid;
    ctx.dynamic_shared = shared_bytes > 0 ? dyn : nullptr;
    ctx.thread_idx = uint3{static_cast<unsigned>(t % block.x), static_cast<unsigned>(t / block.x % block.y),
                           static_cast<unsigned>(t / (block.x * block.y))};
    for (unsigned z = 0; z < grid.z; ++z)
      for (unsigned y = 0; y < grid.y; ++y)
        for (unsigned x = 0; x < grid.x; ++x) {
          ctx.block_idx = uint3{x, y, z};
          try {
            body(user);
            leave(L);
          } catch (Abort&) {
            return;
          }
          if (!between_blocks(L)) return;
        }
  };
  std::vector<std::thread> threads;
  threads.reserve(nthreads);
  for (int t = 0; t < nthreads; ++t) threads.emplace_back(worker, t);
  for (auto& th : threads) th.join();
  std::fflush(stdout);
  if (!L.error.empty()) throw std::runtime_error("CUDA emulation: " + L.error);
}

}  // namespace picnn_emu
