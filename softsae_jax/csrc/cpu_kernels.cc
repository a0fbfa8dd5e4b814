// softsae_jax's kernels for XLA:CPU, called through jax.ffi (softsae_jax/native.py compiles this
// file on first use and registers each handler below as the custom-call target "softsae_jax_<name>").
//
// * TopK: lax.top_k over the last axis, bit for bit (softsae_jax/topk.py:top_k).
//
// Work is shared among XLA's intra-op threads in blocks (ParallelFor); the calling thread takes blocks
// too and waits only for blocks that were taken. Each output element is computed by one thread, so
// results do not depend on the number of threads.
//
// (The sparse decode's and weight gradients' loops over the k selected latents were tried here too, as
// one pass each: memory-bound gathers and scatters, they measured no faster than XLA's loops of k
// gathers or scatters, and slower at d = 768; docs/benchmarks.md.)
//
// TopK's order is XLA:CPU TopK's total order (a float's bits as an integer key, magnitude bits flipped
// when negative: -0.0 below 0.0, NaN with the sign bit clear above +inf, with it set below -inf), equal
// keys by the lower column first. Per row, in two passes over the data: the largest key of each chunk
// of 16 entries; t = the k-th largest of those chunk maxima (k chunks each hold an entry >= t, so every
// entry among the row's k largest is >= t); the entries >= t of the chunks whose maximum is >= t become
// candidates (k to a few k on real activations); the best k of them by nth_element, sorted.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kChunk = 16;
constexpr int64_t kRowsPerTask = 16;

inline int32_t OrderKey(int32_t bits) { return bits ^ ((bits >> 31) & 0x7FFFFFFF); }

// A candidate as one integer whose order is the selection's: the key in the high half, the bitwise
// complement of the column in the low half (a lower column is the larger).
inline int64_t Pack(int32_t key, int32_t col) {
  return static_cast<int64_t>(key) * (int64_t{1} << 32) + static_cast<int64_t>(static_cast<uint32_t>(~col));
}
inline int32_t Column(int64_t packed) { return ~static_cast<int32_t>(static_cast<uint32_t>(packed)); }

struct Scratch {
  std::vector<int32_t> chunk_max, kth;
  std::vector<int64_t> cand;
};

void TopKRow(const float* x, int64_t n, int64_t k, float* vals, int32_t* cols, Scratch& s) {
  const int32_t* bits = reinterpret_cast<const int32_t*>(x);
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  s.chunk_max.resize(chunks);
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t j0 = c * kChunk, j1 = std::min(n, j0 + kChunk);
    int32_t m = INT32_MIN;
    for (int64_t j = j0; j < j1; ++j) m = std::max(m, OrderKey(bits[j]));
    s.chunk_max[c] = m;
  }
  int32_t t = INT32_MIN;
  if (chunks > k) {
    s.kth.assign(s.chunk_max.begin(), s.chunk_max.end());
    std::nth_element(s.kth.begin(), s.kth.begin() + (k - 1), s.kth.end(), std::greater<int32_t>());
    t = s.kth[k - 1];
  }
  s.cand.clear();
  for (int64_t c = 0; c < chunks; ++c) {
    if (s.chunk_max[c] < t) continue;
    const int64_t j0 = c * kChunk, j1 = std::min(n, j0 + kChunk);
    for (int64_t j = j0; j < j1; ++j) {
      const int32_t key = OrderKey(bits[j]);
      if (key >= t) s.cand.push_back(Pack(key, static_cast<int32_t>(j)));
    }
  }
  // At least k candidates: k chunks have a maximum >= t (all chunks when there are at most k, and
  // then n >= k entries).
  if (static_cast<int64_t>(s.cand.size()) > k)
    std::nth_element(s.cand.begin(), s.cand.begin() + (k - 1), s.cand.end(), std::greater<int64_t>());
  std::sort(s.cand.begin(), s.cand.begin() + k, std::greater<int64_t>());
  for (int64_t j = 0; j < k; ++j) {
    const int32_t col = Column(s.cand[j]);
    cols[j] = col;
    vals[j] = x[col];
  }
}

// Runs body(i0, i1) over [0, n) in blocks of `block`, on the calling thread and up to
// pool.num_threads() - 1 pool tasks. A task that starts after every block was taken returns without
// calling body (the handler may have returned by then); the shared state outlives it.
struct Progress {
  explicit Progress(int64_t n) : n(n) {}
  const int64_t n;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::mutex mu;
  std::condition_variable cv;
};

template <typename Body>
void Drain(Progress* p, int64_t block, const Body& body) {
  while (true) {
    const int64_t i0 = p->next.fetch_add(block);
    if (i0 >= p->n) return;
    const int64_t i1 = std::min(p->n, i0 + block);
    body(i0, i1);
    if (p->done.fetch_add(i1 - i0) + (i1 - i0) == p->n) {
      std::lock_guard<std::mutex> lock(p->mu);
      p->cv.notify_all();
    }
  }
}

template <typename Body>
void ParallelFor(ffi::ThreadPool& pool, int64_t n, int64_t block, Body body) {
  if (n <= 0) return;
  auto progress = std::make_shared<Progress>(n);
  auto shared_body = std::make_shared<Body>(std::move(body));
  const int64_t blocks = (n + block - 1) / block;
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), blocks) - 1;
  for (int64_t t = 0; t < helpers; ++t)
    pool.Schedule([progress, shared_body, block] { Drain(progress.get(), block, *shared_body); });
  Drain(progress.get(), block, *shared_body);
  std::unique_lock<std::mutex> lock(progress->mu);
  progress->cv.wait(lock, [&] { return progress->done.load() == n; });
}

ffi::Error TopKImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> vals,
                    ffi::ResultBuffer<ffi::S32> cols) {
  const auto x_dims = x.dimensions();
  const auto v_dims = vals->dimensions();
  if (x_dims.size() == 0 || v_dims.size() != x_dims.size())
    return ffi::Error::InvalidArgument("softsae_jax top_k: the input and the outputs need the same rank >= 1");
  const int64_t n = x_dims.back(), k = v_dims.back();
  if (k < 1 || k > n) return ffi::Error::InvalidArgument("softsae_jax top_k: need 1 <= k <= the last axis");
  if (n > INT32_MAX) return ffi::Error::InvalidArgument("softsae_jax top_k: the last axis must fit int32 indices");
  const int64_t rows = x.element_count() / n;
  const float* xp = x.typed_data();
  float* vp = vals->typed_data();
  int32_t* cp = cols->typed_data();
  ParallelFor(pool, rows, kRowsPerTask, [=](int64_t r0, int64_t r1) {
    Scratch scratch;
    for (int64_t r = r0; r < r1; ++r) TopKRow(xp + r * n, n, k, vp + r * k, cp + r * k, scratch);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SoftsaeTopK, TopKImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>());
