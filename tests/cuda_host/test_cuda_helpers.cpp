// tests/cuda_host/test_cuda_helpers.cpp — the pure arithmetic of the CUDA kernels,
// checked on the CPU (compiled by the C++ compiler, no GPU needed): online
// logsumexp, row partition into prologue/vectors/tail, row splits, the
// sequence search and the workspace layout.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "geopref/cuda/detail/arith.cuh"
#include "geopref/cuda/detail/workspace.cuh"

namespace d = geopref::cuda::detail;

namespace {

double lse_exact(const std::vector<float>& x) {
  double m = -std::numeric_limits<double>::infinity();
  for (float v : x) m = std::max(m, static_cast<double>(v));
  if (m == -std::numeric_limits<double>::infinity()) return m;
  double s = 0;
  for (float v : x) s += std::exp(static_cast<double>(v) - m);
  return m + std::log(s);
}

/// Folds x the way one GPU thread does: 8-wide vectors, then a scalar tail.
d::lse_state fold(const std::vector<float>& x, size_t begin, size_t end) {
  d::lse_state st = d::lse_empty();
  size_t i = begin;
  for (; i + 8 <= end; i += 8) {
    float v[8];
    for (int e = 0; e < 8; ++e) v[e] = x[i + static_cast<size_t>(e)];
    st = d::lse_update<8>(st, v);
  }
  for (; i < end; ++i) st = d::lse_update1(st, x[i]);
  return st;
}

}  // namespace

TEST_CASE("online logsumexp matches the exact value", "[cuda][helpers]") {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 4.0f);
  for (size_t n : {1u, 2u, 7u, 8u, 9u, 100u, 4099u}) {
    for (int variant = 0; variant < 4; ++variant) {
      std::vector<float> x(n);
      for (auto& v : x) v = normal(rng) + (variant == 1 ? 1e4f : 0.0f);
      if (variant == 2) x[n / 2] = -INFINITY;
      if (variant == 3) x[0] = 1e4f, x[n - 1] = -1e4f;
      const double want = lse_exact(x);
      // One state, and the same data split into pieces merged in order.
      const double tol = 4.0 * (static_cast<double>(n) + 16.0) * 5.96e-8 + 2.4e-7 * std::fabs(want);
      auto close = [&](double got) { return got == want || std::fabs(got - want) <= tol; };
      CHECK(close(d::lse_finish(fold(x, 0, n))));
      d::lse_state merged = d::lse_empty();
      for (size_t b = 0; b < n; b += 13) merged = d::lse_merge(merged, fold(x, b, std::min(n, b + 13)));
      CHECK(close(d::lse_finish(merged)));
    }
  }
}

TEST_CASE("online logsumexp: empty and all -inf stay finite-free, never NaN", "[cuda][helpers]") {
  const d::lse_state e = d::lse_empty();
  CHECK(d::lse_finish(e) == -INFINITY);
  const d::lse_state m = d::lse_merge(e, e);
  CHECK(m.m == e.m);
  CHECK(m.s == 0.0f);
  const float all_inf[8] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY,
                            -INFINITY, -INFINITY, -INFINITY, -INFINITY};
  const d::lse_state st = d::lse_update<8>(e, all_inf);
  CHECK(d::lse_finish(st) == -INFINITY);
  CHECK_FALSE(std::isnan(st.s));
  // Merging with the empty state is the identity, bit for bit.
  const float one[1] = {3.5f};
  const d::lse_state a = d::lse_update<1>(e, one);
  const d::lse_state b = d::lse_merge(e, a), c = d::lse_merge(a, e);
  CHECK(b.m == a.m);
  CHECK(b.s == a.s);
  CHECK(c.m == a.m);
  CHECK(c.s == a.s);
  // A single value: (m + log2 2^(y − m))·ln 2, rounded a few times.
  CHECK(std::fabs(d::lse_finish(a) - 3.5f) <= 4 * 2.4e-7f * 3.5f);
}

TEST_CASE("online logsumexp: a NaN or +inf anywhere gives NaN", "[cuda][helpers]") {
  const d::lse_state e = d::lse_empty();
  const float bad[2] = {NAN, INFINITY};
  for (float x : bad) {
    INFO("bad value " << x);
    // First value seen, alone, after finite values, before them, in a vector.
    const d::lse_state alone = d::lse_update1(e, x);
    CHECK(std::isnan(d::lse_finish(alone)));
    CHECK(std::isnan(d::lse_finish(d::lse_update1(d::lse_update1(e, 1.0f), x))));
    CHECK(std::isnan(d::lse_finish(d::lse_update1(alone, 1.0f))));
    CHECK(std::isnan(d::lse_finish(d::lse_update1(alone, 1e30f))));
    float v[8] = {x, x, x, x, x, x, x, x};
    CHECK(std::isnan(d::lse_finish(d::lse_update<8>(e, v))));
    v[0] = 2.0f;
    CHECK(std::isnan(d::lse_finish(d::lse_update<8>(e, v))));
    // Merged with empty, finite and larger states, either side.
    const d::lse_state big = d::lse_update1(e, 1e4f);
    for (const d::lse_state& o : {e, d::lse_update1(e, -3.0f), big}) {
      CHECK(std::isnan(d::lse_finish(d::lse_merge(alone, o))));
      CHECK(std::isnan(d::lse_finish(d::lse_merge(o, alone))));
    }
  }
  // −inf is not bad: it adds nothing.
  CHECK(d::lse_finish(d::lse_update1(d::lse_update1(e, -INFINITY), 0.0f)) == 0.0f);
}

TEST_CASE("exp2_int and ex2_ftz", "[cuda][helpers]") {
  for (int i = 0; i >= -140; --i)
    CHECK(d::exp2_int(static_cast<float>(i)) == (i >= -126 ? std::ldexp(1.0f, i) : 0.0f));
  CHECK(d::exp2_int(-INFINITY) == 0.0f);
  CHECK(d::exp2_int(NAN) == 0.0f);
  CHECK(d::exp2_int(-3.4028234663852886e38f) == 0.0f);
  CHECK(d::ex2_ftz(-127.0f) == 0.0f);  // subnormal results are flushed, as on the device
  CHECK(d::ex2_ftz(-126.0f) == std::ldexp(1.0f, -126));
  CHECK(d::ex2_ftz(-INFINITY) == 0.0f);
  CHECK(std::isnan(d::ex2_ftz(NAN)));
}

TEST_CASE("row partition covers [0, V) exactly with aligned vectors", "[cuda][helpers]") {
  for (int eb : {2, 4}) {
    const int64_t w = 16 / eb;
    for (uint64_t base = 4096; base < 4096 + 16; base += static_cast<uint64_t>(eb)) {
      for (int64_t v = 0; v <= 70; ++v) {
        const d::row_span sp = d::partition_row(base, v, eb);
        CHECK(sp.pro >= 0);
        CHECK(sp.pro < w);
        CHECK(sp.pro <= v);
        CHECK(sp.tail == sp.pro + sp.nvec * w);
        CHECK(sp.tail <= v);
        CHECK(v - sp.tail < w);
        if (sp.nvec > 0) CHECK((base + static_cast<uint64_t>(sp.pro * eb)) % 16 == 0);
        for (int k : {1, 2, 3, 7}) {
          int64_t next_col = 0, next_vec = 0;
          for (int j = 0; j < k; ++j) {
            const d::vec_range r = d::split_range(sp.nvec, j, k);
            const d::vec_range c = d::split_columns(sp, v, eb, j, k);
            CHECK(r.begin <= r.end);
            CHECK(r.begin == next_vec);
            CHECK(c.begin == next_col);
            next_vec = r.end;
            next_col = c.end;
            // The columns a split covers are its prologue, vectors and tail.
            const int64_t lo = j == 0 ? 0 : sp.pro + r.begin * w;
            const int64_t hi = j == k - 1 ? v : sp.pro + r.end * w;
            CHECK(c.begin == lo);
            CHECK(c.end == hi);
          }
          CHECK(next_vec == sp.nvec);
          CHECK(next_col == v);
        }
      }
    }
  }
}

TEST_CASE("row splits: fixed-size chunks for every N, finer for few rows, bounded", "[cuda][helpers]") {
  CHECK(d::choose_splits(0, 1000, 2) == 1);
  CHECK(d::choose_splits(1, 100, 4) == 1);      // short rows are never split
  CHECK(d::choose_splits(1, 128256, 2) == 31);  // few rows: 16032 vectors / 512
  CHECK(d::choose_splits(1, 20000, 4) == 9);    // 5000 vectors / 512
  // Many rows: 64 KiB chunks, the same for every N.
  for (int64_t n : {int64_t{2048}, int64_t{3000}, int64_t{16384}, int64_t{1} << 30}) {
    CHECK(d::choose_splits(n, 128256, 2) == 4);  // 16032 vectors / 4096, rounded up
    CHECK(d::choose_splits(n, 128256, 4) == 8);  // 32064 / 4096
    CHECK(d::choose_splits(n, 32000, 2) == 1);   // 4000 vectors: one chunk
    CHECK(d::choose_splits(n, 32800, 2) == 2);   // 4100
  }
  CHECK(d::choose_splits(16384, int64_t{1} << 30, 2) == d::MAX_SPLITS);
  for (int64_t n : {1, 2, 5, 31, 100, 1000, 2047, 2048, 100000})
    for (int64_t v : {1, 37, 4096, 50257, 128256, 1000000, 100000000})
      for (int eb : {2, 4}) {
        INFO("n " << n << " v " << v << " bytes " << eb);
        const int k = d::choose_splits(n, v, eb);
        const int64_t nvec = v / (16 / eb);
        CHECK(k >= 1);
        CHECK(k <= d::MAX_SPLITS);
        // Every split's vectors within a chunk (up to the cap on splits) ...
        if (k < d::MAX_SPLITS) CHECK((nvec + k - 1) / k <= d::CHUNK_VECS);
        // ... and a split finer than chunks only for few rows, never below 512 vectors.
        if (k > std::max<int64_t>(1, (nvec + d::CHUNK_VECS - 1) / d::CHUNK_VECS)) {
          CHECK(n < d::TARGET_BLOCKS);
          CHECK(nvec >= d::MIN_VECS_PER_SPLIT * k);
        }
      }
}

TEST_CASE("find_sequence returns the owning sequence, empty ones included", "[cuda][helpers]") {
  std::mt19937 rng(3);
  for (int trial = 0; trial < 50; ++trial) {
    const int64_t s = 1 + static_cast<int64_t>(rng() % 20);
    std::vector<int64_t> off(1, 0);
    for (int64_t i = 0; i < s; ++i) off.push_back(off.back() + static_cast<int64_t>(rng() % 4));
    for (int64_t t = 0; t < off.back(); ++t) {
      const int64_t got = d::find_sequence(off.data(), s, t);
      REQUIRE(got >= 0);
      REQUIRE(got < s);
      CHECK(off[got] <= t);
      CHECK(t < off[got + 1]);
    }
  }
  // Garbage offsets still give an index in [0, S).
  const std::vector<int64_t> bad = {0, 9, 3, -4, 7};
  for (int64_t t = -3; t < 12; ++t) {
    const int64_t got = d::find_sequence(bad.data(), 4, t);
    CHECK(got >= 0);
    CHECK(got < 4);
  }
}

namespace {

/// One buffer of a workspace layout: its offset and size in bytes.
struct piece {
  size_t at, bytes;
};

/// The buffers of train_step's layout (make_layout) for N rows, S sequences
/// and P pairs, with their sizes: the forward's, and with `train` the
/// backward's too.
std::vector<piece> train_step_pieces(const d::workspace_layout& w, size_t un, size_t us, size_t up,
                                     bool train) {
  std::vector<piece> pieces = {
      {w.flag, sizeof(int)},
      {w.offsets, (us + 1) * 8},
      {w.cols, un * 4},
      {w.row_seq, un * 4},
      {w.lse, un * 4},
      {w.token_logp, un * 4},
      {w.partials, w.splits > 1 ? un * static_cast<size_t>(w.splits) * sizeof(d::lse_state) : 0},
      {w.seq_logp, us * 8},
      {w.seq_count, us * 8}};
  if (train) {
    pieces.push_back({w.pair_coef, up * 8});
    pieces.push_back({w.seq_grad, us * 4});
    pieces.push_back({w.row_coef, un * 4});
  }
  return pieces;
}

}  // namespace

TEST_CASE("workspace layout: aligned, disjoint, large enough", "[cuda][helpers]") {
  for (int64_t n : {0, 1, 7, 3000})
    for (int64_t s : {0, 1, 5})
      for (int64_t p : {0, 2})
        for (bool train : {false, true}) {
          const d::workspace_layout w = d::make_layout(n, 50257, 2, s, p, train);
          const std::vector<piece> pieces =
              train_step_pieces(w, static_cast<size_t>(n), static_cast<size_t>(s), static_cast<size_t>(p), train);
          for (size_t i = 0; i < pieces.size(); ++i) {
            CHECK(pieces[i].at % d::WORKSPACE_ALIGN == 0);
            CHECK(pieces[i].at + pieces[i].bytes <= w.bytes);
            for (size_t j = 0; j < i; ++j)
              if (pieces[i].bytes > 0 && pieces[j].bytes > 0)
                CHECK((pieces[i].at >= pieces[j].at + pieces[j].bytes ||
                       pieces[j].at >= pieces[i].at + pieces[i].bytes));
          }
          CHECK(d::workspace_request(w) == w.bytes + d::WORKSPACE_ALIGN - 1);
        }
  // The base is rounded up inside the spare bytes, whatever the caller's pointer.
  for (uintptr_t p = 0x1000; p < 0x1000 + 512; p += 8) {
    const uintptr_t b = d::align_up_ptr(p);
    CHECK(b % d::WORKSPACE_ALIGN == 0);
    CHECK(b >= p);
    CHECK(b - p < d::WORKSPACE_ALIGN);
  }
}

// logits_grad's layout, tested as train_step's is above, over every N up to
// 300 (and a few large ones): a piece shorter than its buffer by up to 63
// rows is otherwise hidden by the 256-byte rounding for most N (the GPU
// case "workspaces of exactly the asked size ..." runs N = 65 for real).
// Also every N for make_layout, since the test above tries four.
TEST_CASE("logits_grad workspace layout: aligned, disjoint, large enough, for every N", "[cuda][helpers]") {
  auto check = [](const d::workspace_layout& w, const std::vector<piece>& pieces) {
    bool ok = true;
    for (size_t i = 0; i < pieces.size(); ++i) {
      ok = ok && pieces[i].at % d::WORKSPACE_ALIGN == 0;
      ok = ok && pieces[i].at + pieces[i].bytes <= w.bytes;
      for (size_t j = 0; j < i; ++j)
        if (pieces[i].bytes > 0 && pieces[j].bytes > 0)
          ok = ok && (pieces[i].at >= pieces[j].at + pieces[j].bytes ||
                      pieces[j].at >= pieces[i].at + pieces[i].bytes);
    }
    return ok && d::workspace_request(w) == w.bytes + d::WORKSPACE_ALIGN - 1;
  };
  std::vector<int64_t> ns;
  for (int64_t n = 0; n <= 300; ++n) ns.push_back(n);
  for (int64_t n : {4095, 4097, 100001}) ns.push_back(n);
  for (int64_t n : ns)
    for (int64_t s : {0, 1, 5, 64, 65})
      for (int64_t v : {37, 50257}) {
        INFO("N = " << n << ", S = " << s << ", V = " << v);
        const auto un = static_cast<size_t>(n), us = static_cast<size_t>(s);
        const d::workspace_layout g = d::make_grad_layout(n, v, 2, s);
        CHECK(g.splits == d::choose_splits(n, v, 2));  // train_step's backward launch
        CHECK(check(g, {{g.flag, sizeof(int)}, {g.offsets, (us + 1) * 8}, {g.cols, un * 4}, {g.row_seq, un * 4},
                        {g.row_coef, un * 4}}));
        // The per-token primitive's layouts (token_api.cuh): the forward's
        // columns, lse and partials; the backward's columns and g_t.
        const d::workspace_layout tf = d::make_token_layout(n, v, 2, false);
        const d::workspace_layout tb = d::make_token_layout(n, v, 2, true);
        CHECK(tf.splits == d::choose_splits(n, v, 2));
        CHECK(tb.splits == tf.splits);
        CHECK(check(tf, {{tf.flag, sizeof(int)}, {tf.cols, un * 4}, {tf.lse, un * 4},
                         {tf.partials, tf.splits > 1 ? un * static_cast<size_t>(tf.splits) * sizeof(d::lse_state) : 0}}));
        CHECK(check(tb, {{tb.flag, sizeof(int)}, {tb.cols, un * 4}, {tb.row_coef, un * 4}}));
        const d::workspace_layout t = d::make_layout(n, v, 2, s, s / 2, true);
        CHECK(check(t, train_step_pieces(t, un, us, us / 2, true)));
      }
}
