// tests/cuda/test_guards.cu — cases for faults a mutation run planted in the
// rewritten kernels and their host side that the fast suite (emulated GPU
// tests + CUDA-host tests) let through (issue 24). Each case names the fault
// it guards against; dev/mutations/issue24.md records each planted fault and
// how many assertions it failed here. All are fast (not [vocab] / [matrix] /
// [large]), so CI also runs them under ASan/UBSan on the host emulator. The
// one-pass cases (plan limit, token weights, host layout) live in
// test_fused_linear_one_pass.cu, next to that path's harness.
//
// Tolerances are the harness's error model (gpu_harness.cuh) unless a case
// says otherwise.
#include <catch2/catch.hpp>
#include <cublas_v2.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "geopref/cuda/fused_linear.cuh"
#include "geopref/cuda/linear_token_logps.cuh"
#include "geopref/cuda/token_logps.cuh"
#include "geopref/cuda/vocab_linear.cuh"
#include "geopref/cuda/vocab_parallel.cuh"
#include "gpu_harness.cuh"
#include "linear_harness.cuh"

using namespace geopref::test;
using geopref::loss_type;

namespace {

namespace gd = geopref::cuda::detail;

/// Sets logit (t, col) of a problem (bytes and value) to x rounded to its dtype.
void set_logit(problem& pr, int64_t t, int64_t col, float x) {
  const int es = dtype_bytes(pr.cfg.dtype);
  const size_t i = static_cast<size_t>(t * pr.ld + col);
  pr.z[i] = encode(pr.cfg.dtype, x, &pr.logits[i * es]);
}

const gc::dtype all_dtypes[3] = {gc::dtype::float32, gc::dtype::float16, gc::dtype::bfloat16};

}  // namespace

// ---------------------------------------------------------------------------
// Fault: the running maximum of forward_kernel's unrolled body raised
// wrongly when a thread runs the body more than once (a raise only from the
// empty state, or a raise that does not rescale the sum). Below ~2048 rows
// choose_splits keeps splits at 512..1023 vectors, so each thread runs the
// body once from the empty state and nothing else sees the fault. Here one
// row so long that the split count hits MAX_SPLITS = 64 with 2048 vectors per
// split: every thread runs the body exactly twice (vectors tid + {0, 256,
// 512, 768}, then + 1024), and the row rises along each split by 200 (≈ 289
// in base 2) so the second group's maximum is ≈ 100 above the first's: a
// missed rescale doubles the sum at least, a missed raise overflows it (2^144
// terms). Forward only (grad = false): the fault is the forward's, and the
// backward over 10⁶ columns would only cost time. Every dtype.
TEST_CASE("the running max rises inside the unrolled body, twice per thread, every dtype",
          "[gpu][gaps]") {
  uint64_t seed = 24100;
  for (gc::dtype dt : all_dtypes) {
    const int es = dtype_bytes(dt), w = 16 / es;
    constexpr int64_t PER = 2 * gd::FWD_UNROLL * gd::BLOCK;  // vectors per split
    const int64_t nvec = gd::MAX_SPLITS * PER;
    // 2^19 floats, 2^20 16-bit values; one scored row, P = 1 against an empty sequence
    case_config c = gdpo_case(dt, nvec * w, {1, 0}, ++seed);
    c.mask_prob = 0.0;
    c.grad = false;
    INFO(describe(c));
    REQUIRE(gd::choose_splits(1, c.vocab, es) == gd::MAX_SPLITS);
    REQUIRE(gd::split_range(nvec, 0, gd::MAX_SPLITS).end == PER);
    REQUIRE(gd::split_range(nvec, gd::MAX_SPLITS - 1, gd::MAX_SPLITS).begin == nvec - PER);
    problem pr;
    make_problem(c, pr);
    // The logits rows start 256-byte aligned (device_logits, misalign 0), so
    // column col is in vector col / w and the prologue is empty.
    std::mt19937_64 rng(c.seed);
    std::normal_distribution<float> noise(0.0f, 0.5f);
    for (int64_t col = 0; col < pr.v; ++col) {
      const int64_t pos = (col / w) % PER;  // the vector's place in its split
      set_logit(pr, 0, col, 200.0f * static_cast<float>(pos) / static_cast<float>(PER) + noise(rng));
    }
    set_reference(pr);
    run_compared(pr);
  }
}

// ---------------------------------------------------------------------------
// Fault: max_words (the packed 16-bit maximum of the unrolled body) losing
// the HIGH half of a bf16x2 / f16x2 word (e.g. returning the low lane only).
// Rows of 8184 columns = 1023 vectors: one split, and every thread but the
// last runs the unrolled body once. Each row's maximum (110) is a single odd
// column: the high half of word r (x, y, z, w) of the r-th vector of thread
// 17 + 50r's group; its neighbours are N(0, 2), so a maximum taken from the
// low halves is ≥ 90 too small and the spike's term 2^(110·log₂e − m)
// overflows the float sum (inf lse). Gradient included: its p ≈ 1 column.
TEST_CASE("16-bit rows whose maximum is only in the high half of a packed word",
          "[gpu][small][gaps]") {
  uint64_t seed = 24200;
  for (gc::dtype dt : {gc::dtype::float16, gc::dtype::bfloat16}) {
    case_config c = gdpo_case(dt, 1023 * 8, {1, 1, 1, 1}, ++seed);
    c.mask_prob = 0.0;
    c.scale = 2.0;
    INFO(describe(c));
    REQUIRE(gd::choose_splits(4, c.vocab, 2) == 1);
    problem pr;
    make_problem(c, pr);
    double neighbours = -INFINITY;
    for (float z : pr.z) neighbours = std::max(neighbours, static_cast<double>(z));
    for (int64_t r = 0; r < 4; ++r) {
      const int64_t tid = 17 + 50 * r, q = tid + r * gd::BLOCK;  // group slot r of thread tid
      REQUIRE(q + (gd::FWD_UNROLL - 1 - r) * gd::BLOCK < 1023);  // inside the unrolled body
      const int64_t col = q * 8 + 2 * r + 1;                    // word r, high half
      set_logit(pr, r, col, 110.0f);
      if (pr.labels[r] == col) pr.labels[r] = col - 1;
    }
    REQUIRE(110.0 - neighbours >= 90.0);
    set_reference(pr);
    run_compared(pr);
  }
}

// ---------------------------------------------------------------------------
// Fault: the backward's scalar path (taken when the gradient row is not
// aligned where the logits row is) writing one column past its split
// (i <= cr.end): the last split then writes column V. With the gradient
// packed (grad_pad 0) that is the next row's first column or the guard band:
// only a crash or a later overwrite showed it. Here every such layout has
// padding columns (grad_pad 3) that must keep their poison, two splits per
// row, gradients misaligned by every element offset against aligned logits
// and aligned against misaligned logits, in every dtype and as float.
TEST_CASE("gradients misaligned against the logits take the scalar path exactly",
          "[gpu][small][gaps]") {
  uint64_t seed = 24300;
  for (gc::dtype dt : all_dtypes) {
    const int w = 16 / dtype_bytes(dt);
    for (int variant = 0; variant < 3; ++variant) {
      const uint64_t misalign_from = seed;  // the grad_misalign draw reads the seed before ++
      // 1025 vectors: 2 splits per row
      case_config c = gdpo_case(dt, dt == gc::dtype::float32 ? 4101 : 8203, {2, 1, 2, 1}, ++seed);
      c.extra_rows = 1;
      c.grad_pad = 3;
      c.grad_fp32 = variant == 2;
      c.misalign = variant == 1 ? 1 : 0;
      c.grad_misalign =
          variant == 1 ? 0 : 1 + static_cast<int64_t>(misalign_from % static_cast<uint64_t>(w - 1));
      INFO(describe(c) << " grad_misalign=" << c.grad_misalign);
      REQUIRE(gd::choose_splits(7, c.vocab, dtype_bytes(dt)) == 2);
      check_case(c);
    }
  }
}

// ---------------------------------------------------------------------------
// Fault: the token-weight check accepting ±∞ (e.g. isnan in place of
// !isfinite) in sequence_kernel or row_coef_kernel. A scored row's weight of
// +∞ (then −∞) must be a device-side invalid_weight, and the row must count
// with weight 0 in every output: the reference is the same problem with that
// weight 0. Through train_step (both kernels) and logits_grad (row_coef_kernel
// only), each against the reference / the fused gradient.
TEST_CASE("a token weight of +inf or -inf is invalid_weight and counts as 0",
          "[gpu][small][gaps]") {
  uint64_t seed = 24400;
  for (float bad : {INFINITY, -INFINITY}) {
    case_config c = gdpo_case(gc::dtype::float32, 37, {5, 7, 6, 4}, ++seed);
    c.mask_prob = 0.0;
    c.token_weights = true;
    INFO(describe(c) << " bad weight " << bad);
    problem pr;
    make_problem(c, pr);
    const int64_t t_bad = 6;  // a scored row of sequence 1
    pr.tw[t_bad] = bad;       // what the GPU reads
    pr.tw_d[t_bad] = 0.0;     // what the reference reads: the documented treatment
    set_reference(pr);
    gpu_result r = run_gpu(pr);
    REQUIRE(r.host_status == status::success);
    CHECK(r.device == status::invalid_weight);
    r.device = status::success;  // recorded as asked; the numbers are those of weight 0
    compare(pr, r);

    // logits_grad alone (no sequence_kernel): row_coef_kernel must record it
    // and zero the row, bit for bit the fused gradient.
    device_io io(pr);
    device_logits z(pr);
    dmem lse = upload(r.lse), gs = upload(r.grad_seq);
    dmem g2(static_cast<size_t>(pr.n * pr.v * 4));
    poison(g2);
    gc::grad_args a = grad_args_of(io.tokens(pr, z.ptr, pr.ld), lse, gs, g2.get(), pr.v);
    size_t bytes = 0;
    REQUIRE(gc::logits_grad(nullptr, bytes, a, c.opt) == status::success);
    dmem ws(bytes);
    CUDA_REQUIRE(cudaDeviceSynchronize());
    REQUIRE(gc::logits_grad(ws.get(), bytes, a, c.opt) == status::success);
    const status dev = device_status_of(ws);
    CHECK(dev == status::invalid_weight);
    CHECK(same_bits(download<uint8_t>(g2.get(), g2.bytes()), r.grad));
  }
}

// ---------------------------------------------------------------------------
// Fault: an ignored row's upstream gradient g_t read (token_rows_kernel) or
// its row computed (backward_kernel) — it must not reach the gradient. Until
// now one case put a NaN g_t on one ignored row. Here ignored rows carry
// NaN, ±∞, 1e30 and −7 as g_t, and half of them NaN logits (never read):
// the device status stays success, their gradient rows are exactly 0, and
// the scored rows match the CPU reference, element by element, with the
// harness's gradient bound for an exact g_t (|g| p (err(lse) + (2|d| + 6)u)
// + (3u + u_out)|G|, the GPU's lse within eps_sum + 2u|lse|).
TEST_CASE("ignored rows' upstream gradient and logits never reach the gradient",
          "[gpu][small][gaps]") {
  uint64_t seed = 24500;
  for (gc::dtype dt : {gc::dtype::float32, gc::dtype::bfloat16}) {
    case_config c;
    c.dtype = dt;
    c.vocab = 45;
    c.misalign = 3;
    c.seq_lens = {24};
    c.mask_prob = 0.4;
    c.grad_pad = 2;
    c.seed = ++seed;
    INFO(describe(c));
    problem pr;
    make_problem(c, pr);
    const int64_t ignore = c.opt.ignore_index;
    std::mt19937_64 rng(c.seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> g(static_cast<size_t>(pr.n));
    const float junk[5] = {NAN, INFINITY, -INFINITY, 1e30f, -7.0f};
    int n_ignored = 0;
    for (int64_t t = 0; t < pr.n; ++t) {
      if (pr.labels[t] != ignore) {
        g[t] = normal(rng);
        continue;
      }
      g[t] = junk[n_ignored % 5];
      if (n_ignored % 2 == 0)
        for (int64_t col = 0; col < pr.v; ++col) set_logit(pr, t, col, NAN);
      ++n_ignored;
    }
    REQUIRE(n_ignored >= 5);
    std::vector<double> g_d(g.begin(), g.end());
    geopref::support::token_ref_result ref;
    REQUIRE(geopref::support::run_token_reference(pr.ref_in, ignore, g_d.data(), ref) == status::success);

    const device_logits logits(pr);
    const device_grad grad(pr, logits);
    const dmem labels = upload(pr.labels), dg = upload(g);
    dmem logp(pr.n * sizeof(float)), lse(pr.n * sizeof(float));
    gc::token_logps_args fa;
    fa.rows.logits = logits.ptr;
    fa.rows.logits_dtype = dt;
    fa.rows.n_rows = pr.n;
    fa.rows.vocab = pr.v;
    fa.rows.ld = pr.ld;
    fa.rows.labels = labels.get();
    fa.rows.ignore_index = ignore;
    fa.token_logps = logp.get<float>();
    fa.lse = lse.get<float>();
    size_t bytes = 0;
    REQUIRE(gc::token_logps(nullptr, bytes, fa) == status::success);
    dmem ws(bytes);
    CUDA_REQUIRE(cudaDeviceSynchronize());
    REQUIRE(gc::token_logps(ws.get(), bytes, fa) == status::success);
    const status dev = device_status_of(ws);
    CHECK(dev == status::success);
    const gc::token_grad_args ba = grad_args_after(fa, dg, grad.ptr, grad.api_ld);
    const dmem ws2 = GEOPREF_RUN(gc::token_logps_grad, ba);
    CHECK(device_status_of(ws2) == status::success);  // no ignored row's g_t was read
    const std::vector<float> got_lse = download<float>(lse.get(), pr.n);
    const std::vector<uint8_t> got = grad.download_all(pr);

    const double u_out = out_roundoff(c);
    checker ck_lse("lse"), ck_grad("grad_logits"), ck_zero("ignored rows' gradient"),
        ck_pad("columns [V, grad_ld) untouched");
    for (int64_t t = 0; t < pr.n; ++t) {
      const uint8_t* row = got.data() + t * grad.ld * dtype_bytes(dt);
      for (int64_t v = 0; v < pr.v; ++v) {
        const double x = decode(dt, row + v * dtype_bytes(dt));
        const double want = ref.grad_logits[static_cast<size_t>(t * pr.v + v)];
        if (pr.labels[t] == ignore) {
          ck_zero(t * pr.v + v, x, 0.0, 0.0);
          continue;
        }
        const double tol_lse = eps_sum(pr.v) + 2 * U32 * std::fabs(ref.lse[t]);
        const double d = pr.z[static_cast<size_t>(t * pr.ld + v)] - ref.lse[t];
        const double p = std::exp(d);
        const double tol = std::fabs(g_d[t]) * p * (tol_lse + (2 * std::fabs(d) + 6) * U32) +
                           (3 * U32 + u_out) * std::fabs(want) + 1e-40;
        ck_grad(t * pr.v + v, x, want, tol);
      }
      if (pr.labels[t] != ignore)
        ck_lse(t, got_lse[t], ref.lse[t], eps_sum(pr.v) + 2 * U32 * std::fabs(ref.lse[t]));
      check_grad_padding(ck_pad, pr, t, row, grad.ld, dtype_bytes(dt), false);
    }
    ck_lse.report();
    ck_grad.report();
    ck_zero.report();
    ck_pad.report();
  }
}

// ---------------------------------------------------------------------------
// The linear entries' host checks: a small float32 projection on the device.
namespace {

/// H [N, Hd], W [V, Hd] (uniform in [−1, 1]), labels, offsets {0, 3, 6}
/// (S = 2, one TRL pair) and room for every output of any slice.
struct small_linear {
  static constexpr int64_t N = 6, HD = 4, V = 12, S = 2;
  std::vector<int64_t> lab;
  dmem H, W, labels, offsets, loss, seq, counts, tlp, lse, gseq, gh, gw;
  explicit small_linear(std::vector<int64_t> l) : lab(std::move(l)) {
    std::mt19937_64 rng(24600);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    std::vector<float> h(static_cast<size_t>(N * HD)), w(static_cast<size_t>(V * HD));
    for (float& x : h) x = u(rng);
    for (float& x : w) x = u(rng);
    H = upload(h);
    W = upload(w);
    labels = upload(lab);
    offsets = upload(std::vector<int64_t>{0, 3, 6});
    loss = dmem(4);
    seq = dmem(S * 4);
    counts = dmem(S * 8);
    tlp = dmem(N * 4);
    lse = dmem(N * 4);
    gseq = dmem(S * 4);
    gh = dmem(N * HD * 4);
    gw = dmem(V * HD * 4);
  }
  /// The inputs of the slice of W's rows [begin, begin + width).
  gc::linear_inputs in(int64_t begin, int64_t width, cublasHandle_t h) const {
    gc::linear_inputs x;
    x.hidden = H.get();
    x.weight = static_cast<const float*>(W.get()) + begin * HD;
    x.type = gc::dtype::float32;
    x.n_rows = N;
    x.hidden_size = HD;
    x.vocab = width;
    x.labels = labels.get();
    x.offsets = offsets.get();
    x.n_seqs = S;
    x.cublas = h;
    return x;
  }
  gc::linear_train_args train(const gc::linear_inputs& x) const {
    gc::linear_train_args a;
    a.in = x;
    a.n_pairs = 1;
    a.loss = loss.get<float>();
    a.seq_logps = seq.get<float>();
    a.seq_counts = counts.get<int64_t>();
    a.token_logps = tlp.get<float>();
    a.lse = lse.get<float>();
    a.grad_seq_logps = gseq.get<float>();
    a.grad_hidden = gh.get();
    a.grad_weight = gw.get();
    a.grad_weight_float32 = true;
    return a;
  }
};

gc::vocab_slice slice24(int64_t begin, int64_t total, int rank, int k) {
  gc::vocab_slice s;
  s.begin = begin;
  s.total = total;
  s.rank = rank;
  s.n_ranks = k;
  return s;
}

/// A workspace of `ws_bytes` at a 256-byte boundary inside one allocation
/// with room for a records buffer of `extent` records on either side, so a
/// call the checks let through still reads and writes valid memory.
struct overlap_arena {
  dmem mem;
  uint8_t* ws = nullptr;
  size_t ws_bytes = 0, used = 0;
  int64_t extent = 0;
  overlap_arena(size_t bytes, int64_t records) : ws_bytes(bytes), extent(records) {
    const size_t rec = static_cast<size_t>(records) * sizeof(gc::vocab_record);
    const size_t pre = (rec + 255) / 256 * 256 + 256;
    mem = dmem(pre + bytes + rec + 256);
    poison(mem);
    ws = static_cast<uint8_t*>(mem.get()) + pre;  // cudaMalloc's 256-byte alignment: ws is aligned
    REQUIRE(reinterpret_cast<uintptr_t>(ws) % 256 == 0);
    used = bytes - (gd::WORKSPACE_ALIGN - 1);  // what the layout uses from the aligned base
  }
  /// The placements: 0 the workspace's first byte on (whole extent inside or
  /// over it), 1 only the last record on the workspace's first bytes, 2 the
  /// first record on the workspace's last bytes, 3 just before, 4 just after.
  gc::vocab_record* at(int where) const {
    const auto r = static_cast<ptrdiff_t>(sizeof(gc::vocab_record));
    uint8_t* p = ws;
    if (where == 1) p = ws - (extent - 1) * r;
    if (where == 2) p = ws + used - r;
    if (where == 3) p = ws - extent * r;
    if (where == 4) p = ws + used;
    return reinterpret_cast<gc::vocab_record*>(p);
  }
  static status expected(int where) { return where <= 2 ? status::overlapping_buffers : status::success; }
};

const char* place_name(int where) {
  static const char* names[5] = {"at the workspace", "only its last record on the workspace",
                                 "its first record on the workspace's last bytes",
                                 "just before the workspace", "just after the workspace"};
  return names[where];
}

}  // namespace

// Fault: the records buffer's overlap check seeing less than the records'
// whole extent ([N] for the stats entries, [K, N] for the steps: e.g. N in
// place of K·N) or less than the whole workspace (a fused-linear entry
// checking its base layout without the chunk). For every entry that takes
// records: a buffer at the workspace, one meeting it only with its last
// record, one meeting its last bytes with its first record — each
// overlapping_buffers — and, as controls, the buffer right before and right
// after (accepted).
/// A vocab-parallel entry's arguments `a` with the slice `sl` and the
/// gathered records `r`.
template <class Args>
Args sliced(Args a, const gc::vocab_slice& sl, gc::vocab_record* r = nullptr) {
  a.slice = sl;
  a.records = r;
  return a;
}

/// A linear entry's inputs for a size query: `dt`, N rows, hidden size Hd,
/// V columns, two sequences; no buffers.
gc::linear_inputs query_inputs(gc::dtype dt, int64_t n, int64_t hd, int64_t v) {
  gc::linear_inputs in;
  in.type = dt;
  in.n_rows = n;
  in.hidden_size = hd;
  in.vocab = v;
  in.n_seqs = 2;
  return in;
}

TEST_CASE("records overlapping the workspace by their whole extent, every entry",
          "[gpu][small][gaps][vocab_parallel]") {
  constexpr int K = 2;
  const case_config c = gdpo_case(gc::dtype::float32, 61, {5, 7, 6, 4}, 24601);
  problem pr;
  make_problem(c, pr);
  set_reference(pr);
  const device_logits logits(pr);
  device_io io(pr);
  const int64_t width = 30;  // rank 1's slice [30, 61)
  const gc::vocab_slice sl = slice24(30, pr.v, 1, K);
  gc::token_inputs tok = io.tokens(pr, logits.ptr + 30 * 4, pr.ld);
  tok.vocab = pr.v - width;
  gc::sequence_rows rows = io.rows(pr);  // vocab_parallel_logps reads no logits
  rows.vocab = tok.vocab;
  blas_handle h;
  small_linear lin({1, 5, -100, 11, 7, 0});
  const gc::linear_inputs lin_in = lin.in(6, 6, h.h);
  const gc::vocab_slice lin_sl = slice24(6, small_linear::V, 1, K);

  // Each entry's arguments but the slice and records.
  gc::vocab_stats_args st;
  st.tokens = tok;
  gc::vocab_train_args tr;
  tr.train = io.train(pr, logits.ptr + 30 * 4, pr.ld, nullptr, 0);
  tr.train.tokens.vocab = tok.vocab;
  gc::vocab_logps_args lp;
  lp.tokens = rows;
  lp.seq_logps = io.seq_logps.get<float>();
  gc::vocab_linear_stats_args ls;
  ls.in = lin_in;
  gc::vocab_linear_train_args lt;
  lt.train = lin.train(lin_in);
  const geopref::options plain;
  // Each entry as (workspace, bytes, records) → status.
  struct entry {
    const char* name;
    int64_t extent;
    std::function<status(void*, size_t&, gc::vocab_record*)> call;
  };
  using rec = gc::vocab_record*;
  const std::vector<entry> entries = {
      {"vocab_parallel_stats", pr.n,
       [&](void* w, size_t& b, rec r) { return gc::vocab_parallel_stats(w, b, sliced(st, sl, r), c.opt); }},
      {"vocab_parallel_train_step", K * pr.n,
       [&](void* w, size_t& b, rec r) {
         return gc::vocab_parallel_train_step(w, b, sliced(tr, sl, r), c.opt);
       }},
      {"vocab_parallel_logps", K * pr.n,
       [&](void* w, size_t& b, rec r) { return gc::vocab_parallel_logps(w, b, sliced(lp, sl, r), c.opt); }},
      {"vocab_linear_stats", small_linear::N,
       [&](void* w, size_t& b, rec r) { return gc::vocab_linear_stats(w, b, sliced(ls, lin_sl, r), plain); }},
      {"vocab_linear_step", K * small_linear::N,
       [&](void* w, size_t& b, rec r) { return gc::vocab_linear_step(w, b, sliced(lt, lin_sl, r), plain); }},
  };
  for (const entry& e : entries) {
    INFO(e.name << ", records [" << e.extent << "]");
    size_t bytes = 0;
    REQUIRE(e.call(nullptr, bytes, nullptr) == status::success);
    overlap_arena arena(bytes, e.extent);
    for (int where = 0; where < 5; ++where) {
      INFO("records " << place_name(where));
      CUDA_REQUIRE(cudaDeviceSynchronize());
      size_t b = bytes;
      CHECK(e.call(arena.ws, b, arena.at(where)) == overlap_arena::expected(where));
    }
    CUDA_REQUIRE(cudaDeviceSynchronize());
  }
}

/// The size query of every linear entry on the shapes and strides of
/// `t` (its inputs, and its gradients' strides for linear_token_logps_grad),
/// vocab-parallel as the one slice [0, V) of one rank; with `forward`, the
/// forward entries too (fused_linear_logps, linear_token_logps,
/// vocab_linear_stats). Each CHECKed to be `want`.
void check_linear_queries(const gc::linear_train_args& t, const geopref::options& opt, status want,
                          bool forward) {
  size_t bytes = 0;
  CHECK(gc::fused_linear_step(nullptr, bytes, t, opt) == want);
  gc::linear_token_grad_args tg;
  tg.rows.ld_hidden = t.in.ld_hidden;
  tg.rows.ld_weight = t.in.ld_weight;
  tg.rows.type = t.in.type;
  tg.rows.n_rows = t.in.n_rows;
  tg.rows.hidden_size = t.in.hidden_size;
  tg.rows.vocab = t.in.vocab;
  tg.ld_grad_hidden = t.ld_grad_hidden;
  tg.ld_grad_weight = t.ld_grad_weight;
  CHECK(gc::linear_token_logps_grad(nullptr, bytes, tg) == want);
  gc::vocab_linear_train_args vt;
  vt.train = t;
  vt.slice = slice24(0, t.in.vocab, 0, 1);
  CHECK(gc::vocab_linear_step(nullptr, bytes, vt, opt) == want);
  if (!forward) return;
  gc::linear_logps_args l;
  l.in = t.in;
  CHECK(gc::fused_linear_logps(nullptr, bytes, l, opt) == want);
  gc::linear_token_logps_args tl;
  tl.rows = tg.rows;
  CHECK(gc::linear_token_logps(nullptr, bytes, tl) == want);
  gc::vocab_linear_stats_args vs;
  vs.in = t.in;
  vs.slice = vt.slice;
  CHECK(gc::vocab_linear_stats(nullptr, bytes, vs, opt) == want);
}

// ---------------------------------------------------------------------------
// Fault: a linear entry's stride check missing one stride (any of ld_hidden,
// ld_weight, ld_grad_hidden, ld_grad_weight accepted below the hidden size).
// The size query alone (workspace == nullptr, no buffers) must say
// invalid_stride, in every entry that takes the stride; Hd − 1 and 1 are
// rejected, Hd, Hd + 3 and 0 (meaning Hd) accepted.
TEST_CASE("every linear entry's size query rejects each stride below the hidden size",
          "[gpu][small][gaps][fused_linear]") {
  constexpr int64_t HD = 8;
  const gc::linear_inputs base = query_inputs(gc::dtype::bfloat16, 6, HD, 37);
  const geopref::options opt;
  enum which { hidden, weight, grad_hidden, grad_weight };
  for (which sw : {hidden, weight, grad_hidden, grad_weight}) {
    for (int64_t ld : {HD - 1, int64_t{1}, HD, HD + 3, int64_t{0}}) {
      const status want = ld != 0 && ld < HD ? status::invalid_stride : status::success;
      static const char* names[4] = {"ld_hidden", "ld_weight", "ld_grad_hidden", "ld_grad_weight"};
      INFO(names[sw] << " = " << ld << " (Hd " << HD << ")");
      gc::linear_inputs in = base;
      if (sw == hidden) in.ld_hidden = ld;
      if (sw == weight) in.ld_weight = ld;
      gc::linear_train_args t;
      t.in = in;
      t.n_pairs = 1;
      if (sw == grad_hidden) t.ld_grad_hidden = ld;
      if (sw == grad_weight) t.ld_grad_weight = ld;
      // The forward entries take the input strides only.
      check_linear_queries(t, opt, want, sw == hidden || sw == weight);
    }
  }
}

// ---------------------------------------------------------------------------
// Fault: hidden size 0 with rows accepted (N > 0 needs Hd ≥ 1; the strides,
// 0 meaning Hd, then pass too). Until now one case in one entry. Every linear
// entry's size query: Hd = 0 is invalid_shape, Hd = 1 (the control) success.
TEST_CASE("hidden size 0 with rows is invalid_shape in every linear entry",
          "[gpu][small][gaps][fused_linear]") {
  const geopref::options opt;
  for (int64_t hd : {int64_t{0}, int64_t{1}}) {
    INFO("Hd = " << hd);
    const status want = hd == 0 ? status::invalid_shape : status::success;
    gc::linear_train_args t;
    t.in = query_inputs(gc::dtype::float16, 5, hd, 19);
    t.n_pairs = 1;
    check_linear_queries(t, opt, want, true);
  }
}

// ---------------------------------------------------------------------------
// Fault: a slice's rank equal to K (or above) accepted (rank > n_ranks in
// place of >=). Until now rank = K was tried in one entry. Every entry that
// takes a slice, on its size query: rank K and K + 3 are
// invalid_vocab_records; rank K − 1 (the control) success.
TEST_CASE("a slice's rank at or above K is rejected by every vocab-parallel entry",
          "[gpu][small][gaps][vocab_parallel]") {
  constexpr int K = 3;
  const geopref::options opt;
  gc::token_inputs tok;
  tok.logits_dtype = gc::dtype::float32;
  tok.n_rows = 6;
  tok.vocab = 10;
  tok.ld = 10;
  tok.n_seqs = 2;
  gc::sequence_rows rows;
  rows.n_rows = 6;
  rows.vocab = 10;
  rows.n_seqs = 2;
  const gc::linear_inputs in = query_inputs(gc::dtype::float32, 6, 4, 10);
  // The five entries' arguments but the slice.
  gc::vocab_stats_args s;
  s.tokens = tok;
  gc::vocab_train_args t;
  t.train.tokens = tok;
  t.train.n_pairs = 1;
  gc::vocab_logps_args l;
  l.tokens = rows;
  gc::vocab_linear_stats_args ls;
  ls.in = in;
  gc::vocab_linear_train_args lt;
  lt.train.in = in;
  lt.train.n_pairs = 1;
  for (int rank : {K - 1, K, K + 3}) {
    INFO("rank " << rank << " of " << K);
    const status want = rank < K ? status::success : status::invalid_vocab_records;
    const gc::vocab_slice sl = slice24(20, 30, rank, K);
    size_t bytes = 0;
    CHECK(gc::vocab_parallel_stats(nullptr, bytes, sliced(s, sl), opt) == want);
    CHECK(gc::vocab_parallel_train_step(nullptr, bytes, sliced(t, sl), opt) == want);
    CHECK(gc::vocab_parallel_logps(nullptr, bytes, sliced(l, sl), opt) == want);
    CHECK(gc::vocab_linear_stats(nullptr, bytes, sliced(ls, sl), opt) == want);
    CHECK(gc::vocab_linear_step(nullptr, bytes, sliced(lt, sl), opt) == want);
  }
}

// ---------------------------------------------------------------------------
// Fault: the combine not flagging a scored label that no slice owns (owners
// > 1 in place of != 1). Until now one case, through vocab_parallel_train_step.
// Here through the other two combining entries: vocab_parallel_logps (slices
// [0, 20) and [25, 61), a label 22 in the gap) and vocab_linear_step (W's
// rows [0, 5) and [7, 12), a label 6); each with the gap-free tiling as the
// control (success).
TEST_CASE("a label owned by no slice, through vocab_parallel_logps and vocab_linear_step",
          "[gpu][small][gaps][vocab_parallel]") {
  for (bool gap : {false, true}) {
    INFO((gap ? "a gap between the slices" : "the control: a tiling"));
    {  // the logits path
      case_config c;
      c.dtype = gc::dtype::float32;
      c.vocab = 61;
      c.seq_lens = {5, 7, 6, 4};
      c.mask_prob = 0.0;
      c.seed = 24701;
      problem pr;
      make_problem(c, pr);
      for (int64_t& y : pr.labels) y = y % 20;  // every label in rank 0's slice
      pr.labels[3] = 22;                        // but one
      set_reference(pr);
      const std::vector<int64_t> begin = {0, gap ? 25 : 20}, end = {20, 61};
      const device_logits logits(pr);
      device_io io(pr);
      dmem records(static_cast<size_t>(2 * pr.n) * sizeof(gc::vocab_record));
      for (int r = 0; r < 2; ++r) {
        gc::vocab_stats_args a;
        a.tokens = io.tokens(pr, logits.ptr + begin[r] * 4, pr.ld);
        a.tokens.vocab = end[r] - begin[r];
        a.slice = slice24(begin[r], pr.v, r, 2);
        a.records = records.get<gc::vocab_record>() + r * pr.n;
        dmem ws = GEOPREF_RUN(gc::vocab_parallel_stats, a, c.opt);
        const status dev = device_status_of(ws);
        CHECK(dev == status::success);  // each slice alone is fine
      }
      gc::vocab_logps_args l;
      l.tokens = io.rows(pr);
      l.tokens.vocab = 20;
      l.seq_logps = io.seq_logps.get<float>();
      l.slice = slice24(0, pr.v, 0, 2);
      l.records = records.get<gc::vocab_record>();
      dmem ws = GEOPREF_RUN(gc::vocab_parallel_logps, l, c.opt);
      const status dev = device_status_of(ws);
      CHECK(dev == (gap ? status::invalid_vocab_records : status::success));
    }
    {  // the linear path
      blas_handle h;
      small_linear lin({1, 6, -100, 3, 0, 11});  // label 6: in the gap [5, 7)
      const int64_t begin[2] = {0, gap ? 7 : 5}, end[2] = {5, 12};
      dmem records(static_cast<size_t>(2 * small_linear::N) * sizeof(gc::vocab_record));
      for (int r = 0; r < 2; ++r) {
        gc::vocab_linear_stats_args a;
        a.in = lin.in(begin[r], end[r] - begin[r], h.h);
        a.slice = slice24(begin[r], small_linear::V, r, 2);
        a.records = records.get<gc::vocab_record>() + r * small_linear::N;
        dmem ws = GEOPREF_RUN(gc::vocab_linear_stats, a, geopref::options{});
        const status dev = device_status_of(ws);
        CHECK(dev == status::success);
      }
      gc::vocab_linear_train_args t;
      t.train = lin.train(lin.in(begin[1], end[1] - begin[1], h.h));
      t.slice = slice24(begin[1], small_linear::V, 1, 2);
      t.records = records.get<gc::vocab_record>();
      dmem ws = GEOPREF_RUN(gc::vocab_linear_step, t, geopref::options{});
      const status dev = device_status_of(ws);
      CHECK(dev == (gap ? status::invalid_vocab_records : status::success));
    }
  }
}
