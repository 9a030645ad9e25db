// tests/cuda/test_fused_linear_one_pass.cu — fused_linear_step's one-pass
// path (three GEMMs per segment, whole pairs per chunk; enabled by host
// copies of the offsets and pairs) against the two-pass path and the CPU
// reference, on awkward layouts; the plan; the host copies' checks.
//
// It includes test_fused_linear.cu (one translation unit, which CMake builds
// in its place) so the problems, runs and error model there serve both
// files unchanged. The error model is that file's, with one change of input:
// grad_weight / grad_bias are accumulated once per segment rather than once
// per chunk, so the bound's count of accumulations is the plan's segment
// count (bounds_for below).
//
// Bitwise: both paths compute each row's lse and ℓ_t with the same kernels
// and split count, then run the same final sequence sums and pair step. In
// the host emulator the GEMM gives a row the same bits whatever rows it is
// called with, so loss, metrics, seq_logps, grad_seq_logps, lse, ℓ_t (and
// grad_hidden, a per-row product) are checked bitwise equal there. cuBLAS
// picks its kernel by shape, so on a GPU the rows' logits may round
// differently; there the check is the implication "same lse and ℓ_t bits ⇒
// same loss, metrics, seq_logps and grad_seq_logps bits", plus the error
// model against the reference.
#include "test_fused_linear.cu"

#include <array>
#include <cstring>

namespace {

/// How a run is asked for.
enum class path_wanted { two_pass, one_pass, fallback };

struct path_run {
  lin_result r;
  std::vector<uint8_t> metric_bits, seq_bits, gseq_bits, lse_bits, tlp_bits;
  float loss = 0;
  long long gemms = -1;  // the emulator's count, else -1
};

/// fused_linear_step with (one_pass, fallback) or without (two_pass) the host
/// copies; checks fused_linear_one_pass() agrees with what was wanted. The
/// workspace is exactly the bytes asked for, its base one byte past a
/// 256-byte boundary (as run_fused), poisoned.
path_run run_path(const lin_problem& p, cublasHandle_t h, path_wanted want,
                  const geopref::options* opt_in = nullptr) {
  const lin_config& c = p.c;
  lin_call k(p, h);
  lin_outputs& o = k.o;
  gc::linear_train_args& a = k.a;
  dmem stats(sizeof(geopref::metrics));
  poison(stats);
  a.stats = static_cast<geopref::metrics*>(stats.get());
  if (want != path_wanted::two_pass) {
    a.host_offsets = p.offsets.data();
    a.host_pairs = c.explicit_pairs ? p.pairs.data() : nullptr;
  }
  const geopref::options opt = opt_in != nullptr ? *opt_in : options_of(c);
  REQUIRE(gc::fused_linear_one_pass(a, opt) == (want == path_wanted::one_pass));
  if (c.accumulate) preload_prior(p, o, PRIOR);
#if defined(GEOPREF_HOST_EMULATION)
  const long long before = h->gemm_calls;  // the size query runs none
#endif
  // The user's loss takes the same paths: only the pair kernel differs.
  step_fused(c, a, opt);
  path_run out;
#if defined(GEOPREF_HOST_EMULATION)
  out.gemms = h->gemm_calls - before;
#endif
  out.r = read_fused(p, o);
  out.metric_bits = download<uint8_t>(stats.get(), sizeof(geopref::metrics));
  out.seq_bits = download<uint8_t>(o.seq.get(), static_cast<size_t>(p.S) * 4);
  out.gseq_bits = download<uint8_t>(o.gseq.get(), static_cast<size_t>(p.S) * 4);
  out.lse_bits = download<uint8_t>(o.lse.get(), static_cast<size_t>(p.N) * 4);
  out.tlp_bits = download<uint8_t>(o.tlp.get(), static_cast<size_t>(p.N) * 4);
  out.loss = download<float>(o.loss.get(), 1)[0];
  return out;
}

/// The plan fused_linear_step builds for a problem (the test's own copy).
gc::detail::one_pass_plan plan_of(const lin_problem& p) {
  gc::detail::one_pass_plan plan;
  const int64_t rows = std::min<int64_t>(p.c.chunk_rows, p.N);
  REQUIRE(gc::detail::build_one_pass_plan(p.offsets.data(), p.S,
                                          p.c.explicit_pairs ? p.pairs.data() : nullptr,
                                          p.c.pairs, rows, &plan));
  return plan;
}

/// The header's bounds with `products` accumulations of grad_W / grad_b (a
/// chunk size whose chunk count is at least that).
lin_bounds bounds_for(const lin_problem& p, const linear_ref_result& ref, int64_t products) {
  lin_problem q = p;
  q.c.chunk_rows = std::max<int64_t>(1, p.N / std::max<int64_t>(1, products));
  return bounds_of(q, ref);
}

/// One pass vs the reference (error model), vs two passes (bitwise where
/// the header says, else twice the bound), determinism, GEMM counts.
void check_one_pass_case(const lin_problem& p) {
  INFO(describe(p.c) << " N=" << p.N << " S=" << p.S);
  blas_handle h;
  const gc::detail::one_pass_plan plan = plan_of(p);
  const auto segs = static_cast<int64_t>(plan.segments.size());
  INFO("plan: " << plan.chunks() << " chunks, " << segs << " segments");
  const path_run one = run_path(p, h.h, path_wanted::one_pass);
  const path_run two = run_path(p, h.h, path_wanted::two_pass);
  const linear_ref_result ref = run_ref(p);
  const int64_t two_chunks = (p.N + p.c.chunk_rows - 1) / p.c.chunk_rows;
  {
    INFO("one pass vs the CPU reference");
    compare(p, one.r, ref, bounds_for(p, ref, std::max(segs, two_chunks)), 1.0);
  }
  {
    INFO("one pass vs two passes");
    const bool same_rows = one.lse_bits == two.lse_bits && one.tlp_bits == two.tlp_bits;
#if defined(GEOPREF_HOST_EMULATION)
    CHECK(same_rows);
    CHECK(one.r.gh_bits == two.r.gh_bits);
    CHECK(one.gemms == 3 * segs);         // logits, grad_H, grad_W per segment
    CHECK(two.gemms == 4 * two_chunks);   // logits twice, grad_H, grad_W per chunk
#endif
    if (same_rows) {
      CHECK(one.loss == two.loss);
      CHECK(one.metric_bits == two.metric_bits);
      CHECK(one.seq_bits == two.seq_bits);
      CHECK(one.gseq_bits == two.gseq_bits);
    }
    compare(p, one.r, values_of(ref, two.r), bounds_for(p, ref, std::max(segs, two_chunks)), 2.0);
  }
  {
    INFO("one pass: bitwise repeatable");
    const path_run again = run_path(p, h.h, path_wanted::one_pass);
    again.r.check_same_bits(one.r);
    CHECK(again.loss == one.loss);
    CHECK(again.metric_bits == one.metric_bits);
    CHECK(again.gseq_bits == one.gseq_bits);
  }
}

/// make_lin with explicit pairs replaced by `pairs` (indices into the
/// 2P + 1 sequences make_lin draws; P = pairs.size() / 2 == c.pairs).
lin_problem with_pairs(lin_config c, const std::vector<int64_t>& pairs) {
  c.explicit_pairs = true;
  c.pairs = static_cast<int64_t>(pairs.size() / 2);
  lin_problem p = make_lin(c);
  p.pairs = pairs;
  return p;
}

/// The longest component's rows (the smallest budget with a plan).
int64_t widest_component(const lin_problem& p) {
  for (int64_t rows = 1; rows <= p.N; ++rows) {
    gc::detail::one_pass_plan plan;
    if (gc::detail::build_one_pass_plan(p.offsets.data(), p.S,
                                        p.c.explicit_pairs ? p.pairs.data() : nullptr, p.c.pairs,
                                        rows, &plan))
      return rows;
  }
  return p.N;
}

/// The plan's segments (first row, rows, place in the chunk buffer), field
/// by field.
void check_segments(const gc::detail::one_pass_plan& plan,
                    const std::vector<std::array<int64_t, 3>>& want) {
  REQUIRE(plan.segments.size() == want.size());
  for (size_t g = 0; g < want.size(); ++g) {
    INFO("segment " << g);
    CHECK(plan.segments[g].row0 == want[g][0]);
    CHECK(plan.segments[g].rows == want[g][1]);
    CHECK(plan.segments[g].at == want[g][2]);
  }
}

/// check_one_pass_case on TRL's layout: P = 4 pairs (i, 4 + i), packed
/// sequences of unequal lengths, some empty, 15% ignored labels; chunks as
/// full as the widest pair, so many chunks.
void check_trl_layout(lin_config c) {
  c.pairs = 4;
  c.max_len = 5;
  lin_problem p = make_lin(c);
  p.c.chunk_rows = widest_component(p);
  check_one_pass_case(p);
}

}  // namespace

TEST_CASE("fused linear one pass: the plan", "[fused_linear][one_pass][small]") {
  namespace gd = gc::detail;
  // 7 sequences of rows 2,0,3,1,2,2,1 (offsets[7] = 11 of N = 12 rows);
  // pairs (0,2), (0,3): one chosen, two rejected; (5,4); 1 and 6 in none.
  const std::vector<int64_t> off = {0, 2, 2, 5, 6, 8, 10, 11};
  const std::vector<int64_t> pairs = {0, 2, 0, 3, 5, 4};
  gd::one_pass_plan plan;
  SECTION("components in first-appearance order, packed greedily") {
    // Components: {0,2,3} 6 rows, {1} 0 rows (no chunk), {4,5} 4 rows, {6} 1 row.
    REQUIRE(gd::build_one_pass_plan(off.data(), 7, pairs.data(), 3, 6, &plan));
    REQUIRE(plan.chunks() == 2);
    // chunk 0: sequences 0, 2, 3, rows [0,2) [2,5) [5,6) (1 is empty):
    // one segment [0, 6); chunk 1: 4, 5, 6, rows [6, 11), one segment.
    CHECK(plan.seq_begin == std::vector<int64_t>{0, 3, 6});
    CHECK(std::vector<int64_t>(plan.upload.begin(), plan.upload.begin() + 6) ==
          std::vector<int64_t>{0, 2, 3, 4, 5, 6});
    CHECK(plan.pair_begin == std::vector<int64_t>{0, 2, 3});
    CHECK(std::vector<int64_t>(plan.upload.begin() + 6, plan.upload.end()) ==
          std::vector<int64_t>{0, 1, 2});
    check_segments(plan, {{0, 6, 0}, {6, 5, 0}});
    CHECK(plan.seg_begin == std::vector<int64_t>{0, 1, 2});
    CHECK(plan.rows_end == 11);
  }
  SECTION("a component wider than a chunk: no plan") {
    CHECK(!gd::build_one_pass_plan(off.data(), 7, pairs.data(), 3, 5, &plan));
  }
  SECTION("TRL's layout: chosen and rejected rows are two segments per chunk") {
    // 4 pairs, 8 sequences of 2 rows: pair i = (i, 4 + i).
    const std::vector<int64_t> trl = {0, 2, 4, 6, 8, 10, 12, 14, 16};
    REQUIRE(gd::build_one_pass_plan(trl.data(), 8, nullptr, 4, 8, &plan));
    REQUIRE(plan.chunks() == 2);
    // Chunk 0: sequences 0, 4, 1, 5; chunk 1: 2, 6, 3, 7.
    check_segments(plan, {{0, 4, 0}, {8, 4, 4}, {4, 4, 0}, {12, 4, 4}});
  }
  SECTION("scattered partners: past 4 segments per chunk on average, no plan") {
    // 20 sequences of one row; 0..4 against 10, 12, 14, 16, 18. Budget 10:
    // chunk 0 = {0..4, 10, 12, 14, 16, 18} (6 segments), chunk 1 = the ten
    // unpaired rows 5..9, 11, 13, 15, 17, 19 (6 segments): 12 > 4 · 2.
    std::vector<int64_t> ones(21);
    for (int64_t s = 0; s <= 20; ++s) ones[static_cast<size_t>(s)] = s;
    const std::vector<int64_t> far = {0, 10, 1, 12, 2, 14, 3, 16, 4, 18};
    CHECK(!gd::build_one_pass_plan(ones.data(), 20, far.data(), 5, 10, &plan));
    // One chunk of all 20 rows is a single segment: the plan exists.
    REQUIRE(gd::build_one_pass_plan(ones.data(), 20, far.data(), 5, 20, &plan));
    CHECK(plan.segments.size() == 1);
  }
  SECTION("no row in any sequence: no plan (two passes)") {
    const std::vector<int64_t> empty = {0, 0, 0};
    CHECK(!gd::build_one_pass_plan(empty.data(), 2, nullptr, 1, 4, &plan));
  }
  SECTION("the host checks") {
    CHECK(gd::check_host_layout(off.data(), 7, 12, pairs.data(), pairs.data(), 3) ==
          status::success);
    CHECK(gd::check_host_layout(off.data(), 7, 10, nullptr, nullptr, 3) ==
          status::invalid_offsets);  // offsets[S] = 11 > N
    std::vector<int64_t> bad = off;
    bad[3] = 1;  // decreasing
    CHECK(gd::check_host_layout(bad.data(), 7, 12, nullptr, nullptr, 3) == status::invalid_offsets);
    bad = off;
    bad[0] = 1;
    CHECK(gd::check_host_layout(bad.data(), 7, 12, nullptr, nullptr, 3) == status::invalid_offsets);
    std::vector<int64_t> bp = pairs;
    bp[5] = 7;  // == S
    CHECK(gd::check_host_layout(off.data(), 7, 12, bp.data(), bp.data(), 3) ==
          status::pair_index_out_of_range);
    bp[5] = -1;
    CHECK(gd::check_host_layout(off.data(), 7, 12, bp.data(), bp.data(), 3) ==
          status::pair_index_out_of_range);
    // host pairs without device pairs (or without host offsets)
    CHECK(gd::check_host_layout(off.data(), 7, 12, pairs.data(), nullptr, 3) == status::null_pointer);
    CHECK(gd::check_host_layout(nullptr, 7, 12, pairs.data(), pairs.data(), 3) ==
          status::null_pointer);
  }
}

TEST_CASE("fused linear one pass equals two passes and the reference: TRL layout",
          "[fused_linear][one_pass][small]") {
  for_each_dtype<lin_config>(41, check_trl_layout);
}

TEST_CASE("fused linear one pass: shared sequences, sequences in no pair, options",
          "[fused_linear][one_pass][small]") {
  // 2P + 1 = 9 sequences: one chosen (0) against two rejected (1, 2); 3 vs 4;
  // 6 against 5; 7 and 8 in no pair.
  const std::vector<int64_t> pairs = {0, 1, 0, 2, 3, 4, 6, 5};
  // Each variant: its config (seed 42, sequences of 0..4 rows, then `set`),
  // its pairs, and its budget: the widest component's rows + `extra` (all
  // rows, one chunk, when negative).
  struct variant {
    const char* name;
    void (*set)(lin_config&);
    std::vector<int64_t> pairs;
    int64_t extra = 0;
    void (*adjust)(lin_problem&) = nullptr;  // a change of the drawn problem
  };
  constexpr gc::dtype f16 = gc::dtype::float16, bf16 = gc::dtype::bfloat16;
  const variant variants[] = {
      {"float32, bias, overwrite, chunks of the widest component", [](lin_config&) {}, pairs},
      // P = 5, S = 11: (0,1) twice, (2,2), (3,4) and (4,3); 5..10 in no pair.
      {"a duplicated pair, a sequence against itself, both orders of one pair",
       [](lin_config&) {}, {0, 1, 0, 1, 2, 2, 3, 4, 4, 3}},
      {"bfloat16 into bfloat16 grad_weight, accumulate, no bias, strides, V = 65, H = 1",
       [](lin_config& x) {
         bf16_accumulate_strided(x);
         x.dtype = bf16;
         x.vocab = 65;
         x.hidden = 1;
       },
       pairs, 3},
      {"float16, token weights, average_logps, accumulate into float, one chunk",
       [](lin_config& x) {
         x.dtype = f16;
         x.token_weights = true;
         x.average_logps = true;
         x.accumulate = true;
       },
       pairs, -1},
      {"a caller's loss (log cosh through fused_linear_step<Loss>), bfloat16",
       [](lin_config& x) { x.dtype = bf16; x.user_loss = 0.7; }, pairs, 1},
      {"apo_zero (a two-sided term: pair-local, so one pass), shared sequences",
       [](lin_config& x) { x.loss = loss_type::apo_zero; }, pairs, 2},
      {"ipo (a non-dpo margin), V a multiple of 8, the last sequences empty",
       [](lin_config& x) { x.loss = loss_type::ipo; x.vocab = 64; }, pairs, 0,
       [](lin_problem& p) {
         // Sequences 7 and 8 (in no pair) emptied: more rows after offsets[S].
         p.offsets[8] = p.offsets[7];
         p.offsets[9] = p.offsets[7];
       }}};
  for (const variant& v : variants)
    SECTION(v.name) {
      lin_config x;
      x.seed = 42;
      x.max_len = 4;
      v.set(x);
      lin_problem p = with_pairs(x, v.pairs);
      if (v.adjust != nullptr) v.adjust(p);
      p.c.chunk_rows = v.extra < 0 ? p.N : widest_component(p) + v.extra;
      check_one_pass_case(p);
    }
}

TEST_CASE("fused linear one pass: when it does not apply, two passes run and are right",
          "[fused_linear][one_pass][small]") {
  lin_config c;
  c.seed = 43;
  c.pairs = 3;
  c.max_len = 4;
  lin_problem p = make_lin(c);
  blas_handle h;
  const linear_ref_result ref = run_ref(p);
  SECTION("a component wider than the budget") {
    p.c.chunk_rows = widest_component(p) - 1;
    REQUIRE(p.c.chunk_rows >= 1);
    const path_run f = run_path(p, h.h, path_wanted::fallback);
    compare(p, f.r, ref, bounds_of(p, ref), 1.0);
    const path_run two = run_path(p, h.h, path_wanted::two_pass);
    CHECK(f.r.gh_bits == two.r.gh_bits);  // the same two passes, bit for bit
    CHECK(f.r.gw_bits == two.r.gw_bits);
    CHECK(f.loss == two.loss);
#if defined(GEOPREF_HOST_EMULATION)
    CHECK(f.gemms == two.gemms);
#endif
  }
  SECTION("a batch-coupled term (sft)") {
    lin_config s = c;
    s.loss = loss_type::dpo;
    s.with_sft = true;
    lin_problem q = make_lin(s);
    q.c.chunk_rows = q.N;
    const path_run f = run_path(q, h.h, path_wanted::fallback);
    const linear_ref_result rq = run_ref(q);
    compare(q, f.r, rq, bounds_of(q, rq), 1.0);
  }
  SECTION("the other conditions") {
    lin_call call(p, nullptr);
    gc::linear_train_args& a = call.a;
    a.host_offsets = p.offsets.data();
    const geopref::options opt = options_of(p.c);
    a.in.chunk_bytes = size_t{1} << 30;
    CHECK(gc::fused_linear_one_pass(a, opt));
    geopref::options aot = opt;
    aot.loss.type = loss_type::aot;
    CHECK(!gc::fused_linear_one_pass(a, aot));  // sorted: coupled
    aot.loss.type = loss_type::aot_unpaired;
    CHECK(!gc::fused_linear_one_pass(a, aot));  // each side sorted across the batch
    auto b = a;
    b.host_offsets = nullptr;
    CHECK(!gc::fused_linear_one_pass(b, opt));
    b = a;
    b.grad_hidden = nullptr;
    b.grad_weight = nullptr;
    b.grad_bias = nullptr;
    CHECK(!gc::fused_linear_one_pass(b, opt));  // forward only: one GEMM per chunk anyway
    b = a;
    b.pairs = static_cast<const int64_t*>(call.d.offsets.get());  // pairs given, host_pairs not
    b.n_pairs = 1;
    CHECK(!gc::fused_linear_one_pass(b, opt));
    // The workspace does not depend on the path.
    size_t with = 0, without = 0;
    REQUIRE(gc::fused_linear_step(nullptr, with, a, opt) == status::success);
    b = a;
    b.host_offsets = nullptr;
    REQUIRE(gc::fused_linear_step(nullptr, without, b, opt) == status::success);
    CHECK(with == without);
  }
}

namespace {

/// The host copies' cases: P = 3 explicit pairs over S = 7 sequences (6 in
/// no pair), one chunk; the call's arguments with host copies of the
/// offsets and pairs (`off`, `pr`, which a case may change); the workspace
/// asked for (base one past alignment); the loss with sft added (coupled:
/// two passes, the copies unused). The copies as given take the one pass
/// and leave the device's status clean (the control).
struct host_copies {
  lin_problem p;
  blas_handle h;
  lin_call call;
  gc::linear_train_args& a = call.a;
  geopref::options opt, sft;
  size_t bytes = 0;
  dmem mem;
  void* ws = nullptr;
  std::vector<int64_t> off, pr;

  static lin_problem problem(uint64_t seed) {
    lin_config c;
    c.seed = seed;
    c.explicit_pairs = true;
    lin_problem p = with_pairs(c, {0, 1, 2, 3, 4, 5});
    p.c.chunk_rows = p.N;
    return p;
  }
  explicit host_copies(uint64_t seed)
      : p(problem(seed)), call(p, h.h), opt(options_of(p.c)), off(p.offsets), pr(p.pairs) {
    sft = opt;
    sft.loss.n_terms = 2;
    sft.loss.terms[0] = loss_type::dpo;
    sft.loss.terms[1] = loss_type::sft;
    sft.loss.term_weights[0] = sft.loss.term_weights[1] = 1.0;
    REQUIRE(gc::fused_linear_step(nullptr, bytes, a, opt) == status::success);
    mem = dmem(bytes + 1);
    ws = static_cast<uint8_t*>(mem.get()) + 1;
    a.host_offsets = off.data();
    a.host_pairs = pr.data();
    REQUIRE(gc::fused_linear_one_pass(a, opt));
    CHECK(device_after(a, opt) == status::success);  // the control
  }
  /// The device's status after a step with `x` and `o` on the poisoned workspace.
  status device_after(const gc::linear_train_args& x, const geopref::options& o) {
    poison(mem);
    REQUIRE(gc::fused_linear_step(ws, bytes, x, o) == status::success);
    status dev = status::internal_error;
    REQUIRE(gc::device_status(ws, nullptr, &dev) == status::success);
    return dev;
  }
};

}  // namespace

TEST_CASE("fused linear one pass: host copies that are malformed or disagree",
          "[fused_linear][one_pass][small]") {
  host_copies f(44);

  SECTION("malformed: a host status, nothing launched") {
    std::vector<int64_t> bad = f.off;
    bad[0] = 1;
    auto b = f.a;
    b.host_offsets = bad.data();
    CHECK(gc::fused_linear_step(f.ws, f.bytes, b, f.opt) == status::invalid_offsets);
    bad = f.off;
    bad.back() = f.p.N + 1;
    b.host_offsets = bad.data();
    CHECK(gc::fused_linear_step(f.ws, f.bytes, b, f.opt) == status::invalid_offsets);
    std::vector<int64_t> bp = f.pr;
    bp[3] = f.p.S;
    b = f.a;
    b.host_pairs = bp.data();
    CHECK(gc::fused_linear_step(f.ws, f.bytes, b, f.opt) == status::pair_index_out_of_range);
  }
  SECTION("valid, but not the device's: host_layout_mismatch on the device, in bounds") {
    // A boundary moved by one row (still a valid layout).
    std::vector<int64_t> moved = f.off;
    for (size_t s = 1; s + 1 < moved.size(); ++s)
      if (moved[s] > moved[s - 1]) {
        --moved[s];
        break;
      }
    REQUIRE(moved != f.off);
    auto b = f.a;
    b.host_offsets = moved.data();
    CHECK(gc::fused_linear_one_pass(b, f.opt));
    CHECK(f.device_after(b, f.opt) == status::host_layout_mismatch);
    // Pairs swapped between two pairs (valid, different).
    std::vector<int64_t> swapped = f.pr;
    std::swap(swapped[1], swapped[3]);
    b = f.a;
    b.host_pairs = swapped.data();
    CHECK(f.device_after(b, f.opt) == status::host_layout_mismatch);
    // Also reported when the copies are not used (a coupled loss: two passes).
    CHECK(!gc::fused_linear_one_pass(b, f.sft));
    CHECK(f.device_after(b, f.sft) == status::host_layout_mismatch);
  }
}

// ---------------------------------------------------------------------------
// Issue 24: cases for faults a mutation run planted in the one pass that the
// cases above let through (dev/mutations/issue24.md).
namespace {

/// p with the sequence layout `offsets` (S + 1 entries, S = p.S): N =
/// offsets[S] + 1 (one row after every sequence), and new hidden states,
/// labels (15% ignored) and token weights in [0.5, 1.5) for those rows.
void relayout(lin_problem& p, const std::vector<int64_t>& offsets) {
  REQUIRE(static_cast<int64_t>(offsets.size()) == p.S + 1);
  const lin_config& c = p.c;
  std::mt19937_64 rng(c.seed ^ 0x2400);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  p.offsets = offsets;
  p.N = offsets.back() + 1;
  fill(c.dtype, rng, 1.5 / std::sqrt(static_cast<double>(c.hidden)), p.N, c.hidden, p.ldh, p.Hb, p.H);
  p.labels.clear();
  for (int64_t t = 0; t < p.N; ++t)
    p.labels.push_back(unit(rng) < 0.15 ? -100 : static_cast<int64_t>(rng() % static_cast<uint64_t>(c.vocab)));
  p.token_weights.clear();
  p.tw_d.clear();
  if (c.token_weights)
    for (int64_t t = 0; t < p.N; ++t) {
      p.token_weights.push_back(static_cast<float>(0.5 + unit(rng)));
      p.tw_d.push_back(p.token_weights.back());
    }
}

/// Contiguous runs in a sorted list of rows: the segments of a chunk that
/// holds exactly those rows (the test's own count, for a plan the library
/// refuses to build).
int64_t runs(const std::vector<int64_t>& rows) {
  int64_t n = 0;
  for (size_t i = 0; i < rows.size(); ++i) n += i == 0 || rows[i] != rows[i - 1] + 1;
  return n;
}

}  // namespace

// Fault: the limit of ONE_PASS_MAX_SEGMENTS (4) segments per chunk on average
// off by one either way (>= in place of >, or one more segment allowed). 16
// one-row sequences and an empty 17th, chunks of 8 rows, explicit pairs
// (self pairs add no edge, so they only complete P = 8): the components pack
// into two chunks of 8 rows each.
//   at the limit: (0,8) (2,10) (4,12) (6,14): chunk 0 = rows 0-4, 8, 10, 12,
//     chunk 1 = rows 5-7, 9, 11, 13-15: 4 + 4 = 8 = 4·2 segments: one pass,
//     3 GEMMs per segment, against the reference and the two passes;
//   one past: (0,15) (1,8) (2,10) (3,12): chunk 0 = rows 0-3, 8, 10, 12, 15,
//     chunk 1 = rows 4-7, 9, 11, 13, 14: 5 + 4 = 9 segments: no plan,
//     fused_linear_one_pass() false, the two passes' 4 GEMMs per chunk.
TEST_CASE("fused linear one pass: exactly at the segments-per-chunk limit, and one past it",
          "[fused_linear][one_pass][small]") {
  std::vector<int64_t> off(18);
  for (int64_t s = 0; s <= 16; ++s) off[static_cast<size_t>(s)] = s;
  off[17] = 16;  // sequence 16 empty: in no chunk
  lin_config c;
  c.seed = 45;
  c.max_len = 2;
  c.chunk_rows = 8;
  REQUIRE(gc::detail::ONE_PASS_MAX_SEGMENTS == 4);
  SECTION("at the limit: one pass") {
    lin_problem p = with_pairs(c, {0, 8, 2, 10, 4, 12, 6, 14, 1, 1, 3, 3, 5, 5, 7, 7});
    relayout(p, off);
    const gc::detail::one_pass_plan plan = plan_of(p);
    REQUIRE(plan.chunks() == 2);
    CHECK(plan.seg_begin == std::vector<int64_t>{0, 4, 8});
    CHECK(runs({0, 1, 2, 3, 4, 8, 10, 12}) == 4);
    CHECK(runs({5, 6, 7, 9, 11, 13, 14, 15}) == 4);
    check_one_pass_case(p);  // REQUIREs the one pass, counts 3 GEMMs per segment
  }
  SECTION("one past the limit: two passes") {
    lin_problem p = with_pairs(c, {0, 15, 1, 8, 2, 10, 3, 12, 4, 4, 5, 5, 6, 6, 7, 7});
    relayout(p, off);
    // The chunks the packing makes (first-appearance order, 8 rows each) and
    // their segments, counted here: 5 + 4.
    REQUIRE(runs({0, 1, 2, 3, 8, 10, 12, 15}) == 5);
    REQUIRE(runs({4, 5, 6, 7, 9, 11, 13, 14}) == 4);
    gc::detail::one_pass_plan plan;
    CHECK(!gc::detail::build_one_pass_plan(p.offsets.data(), p.S, p.pairs.data(), p.c.pairs,
                                           p.c.chunk_rows, &plan));
    // A budget of all rows holds everything in one chunk: one segment, a plan.
    CHECK(gc::detail::build_one_pass_plan(p.offsets.data(), p.S, p.pairs.data(), p.c.pairs, p.N,
                                          &plan));
    blas_handle h;
    const path_run f = run_path(p, h.h, path_wanted::fallback);  // REQUIREs one_pass() false
    const linear_ref_result ref = run_ref(p);
    compare(p, f.r, ref, bounds_of(p, ref), 1.0);
#if defined(GEOPREF_HOST_EMULATION)
    CHECK(f.gemms == 4 * ((p.N + p.c.chunk_rows - 1) / p.c.chunk_rows));
#endif
  }
}

// Fault: the one pass's token weights indexed from the chunk buffer's row
// (the segment's `at`) instead of the segment's first row (row0). Ragged
// sequences (1, 2, 3 rows), per-row weights, the at-limit pairs above and
// chunks of 16 rows: each chunk holds four segments and every segment but
// the first starts past the chunk's first row (row0 ≠ at). Against the
// reference and the two passes (check_one_pass_case), in float and bfloat16.
TEST_CASE("fused linear one pass: token weights when a chunk's later segments start elsewhere",
          "[fused_linear][one_pass][small]") {
  std::vector<int64_t> off = {0};
  for (int64_t s = 0; s < 16; ++s) off.push_back(off.back() + 1 + (s * 7) % 3);
  off.push_back(off.back());  // sequence 16 empty
  for (gc::dtype d : {gc::dtype::float32, gc::dtype::bfloat16}) {
    lin_config c;
    c.dtype = d;
    c.seed = 46;
    c.token_weights = true;
    c.chunk_rows = 16;
    lin_problem p = with_pairs(c, {0, 8, 2, 10, 4, 12, 6, 14, 1, 1, 3, 3, 5, 5, 7, 7});
    relayout(p, off);
    const gc::detail::one_pass_plan plan = plan_of(p);
    int moved = 0;  // segments after a chunk's first whose rows start elsewhere than their place
    for (size_t k = 0; k < plan.chunks(); ++k)
      for (int64_t g = plan.seg_begin[k] + 1; g < plan.seg_begin[k + 1]; ++g)
        moved += plan.segments[static_cast<size_t>(g)].row0 != plan.segments[static_cast<size_t>(g)].at;
    INFO("plan: " << plan.chunks() << " chunks, " << plan.segments.size() << " segments");
    REQUIRE(plan.chunks() >= 2);
    REQUIRE(moved >= 2 * static_cast<int>(plan.chunks()));
    bool differ = false;  // the weights differ row by row
    for (size_t t = 1; t < p.token_weights.size(); ++t) differ = differ || p.token_weights[t] != p.token_weights[0];
    REQUIRE(differ);
    check_one_pass_case(p);
  }
}

// Fault: the host/device layout comparison skipping the second index of a
// pair (the rejected side) or the last offset offsets[S] (e.g. a loop one
// short, or S offsets compared instead of S + 1). Host copies that differ
// from the device arrays in that one value only — each still a valid layout
// — must give host_layout_mismatch on the device, on the one pass and when
// the copies go unused (a coupled loss: two passes).
TEST_CASE("fused linear one pass: host copies differing only in a rejected index or in offsets[S]",
          "[fused_linear][one_pass][small]") {
  host_copies f(47);
  CHECK(f.device_after(f.a, f.sft) == status::success);  // the control, two passes

  for (size_t i : {size_t{1}, size_t{5}}) {  // the first pair's rejected index, the last pair's
    INFO("host_pairs[" << i << "] = 6 (the device's " << f.pr[i] << ")");
    std::vector<int64_t> bp = f.pr;
    bp[i] = 6;
    REQUIRE(gc::detail::check_host_layout(f.off.data(), f.p.S, f.p.N, bp.data(), bp.data(), 3) ==
            status::success);
    auto b = f.a;
    b.host_pairs = bp.data();
    CHECK(gc::fused_linear_one_pass(b, f.opt));
    CHECK(f.device_after(b, f.opt) == status::host_layout_mismatch);
    CHECK(f.device_after(b, f.sft) == status::host_layout_mismatch);
  }
  {
    // offsets[S] one row later (N = offsets[S] + 1: still valid).
    std::vector<int64_t> bo = f.off;
    ++bo.back();
    INFO("host offsets[S] = " << bo.back() << " (the device's " << f.off.back() << ")");
    REQUIRE(gc::detail::check_host_layout(bo.data(), f.p.S, f.p.N, f.pr.data(), f.pr.data(),
                                          3) == status::success);
    auto b = f.a;
    b.host_offsets = bo.data();
    CHECK(f.device_after(b, f.opt) == status::host_layout_mismatch);
    CHECK(f.device_after(b, f.sft) == status::host_layout_mismatch);
  }
}

// The one pass with a logit transform (issue 24's mutation pass: the
// segment loop's enqueue_row_forward and its backward ignored the transform
// without a failing fast test): against two passes and the reference with
// bounds_of's transform terms (test_fused_linear.cu), every dtype's map.
TEST_CASE("fused linear one pass with a logit transform equals two passes and the reference",
          "[fused_linear][one_pass][small][transform]") {
  for_each_linear_transform<lin_config>(24200,
                                        [](const lin_config& c, uint64_t&) { check_trl_layout(c); });
}
