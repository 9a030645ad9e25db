// tests/cuda/test_vocab_parallel.cu — the vocab-parallel path
// (geopref/cuda/vocab_parallel.cuh) over K simulated ranks in one process:
// every rank's stats, records gathered into one [K, N] buffer (slots in a
// chosen order), every rank's step writing its own slice of one gradient.
// The result is checked against the CPU reference with the harness's error
// model (compare()): the tolerances of the unsharded path hold unchanged,
// because sharding only changes the order in which the per-thread sums are
// merged (at most K more lse_merge roundings per row, inside eps_sum's 256u
// floor), and the combine, the pair step and the backward are the unsharded
// code. Every rank's outputs are bitwise the same, run after run, whatever
// the slot order.
#include <catch2/catch.hpp>

#include <algorithm>
#include <numeric>

#include "geopref/cuda/vocab_parallel.cuh"
#include "gpu_harness.cuh"

using namespace geopref::test;
using geopref::loss_type;
using geopref::reduction;

namespace {

/// Column bounds [K + 1] of the even split, the last rank taking the rest.
std::vector<int64_t> even_bounds(int64_t v, int k) {
  std::vector<int64_t> b;
  for (int r = 0; r < k; ++r) b.push_back(gc::even_slice(v, r, k, nullptr).begin);
  b.push_back(v);
  return b;
}

struct vp_run {
  gpu_result merged;                  // rank 0's outputs, the whole gradient
  std::vector<gpu_result> per_rank;   // every rank's outputs (no gradient)
  std::vector<uint8_t> records;       // the gathered buffer
  status stats_device = status::internal_error;
};

/// The whole vocab-parallel step of K simulated ranks. slot[r]: where rank
/// r's records land in the gathered buffer (a permutation, or not, for the
/// fault tests); rank r's slice is [begin[r], end[r]) (a tiling of [0, V)
/// but for the fault tests).
vp_run run_vocab_parallel(const problem& pr, const std::vector<int64_t>& begin,
                          const std::vector<int64_t>& end, const std::vector<int>& slot) {
  const case_config& c = pr.cfg;
  const int k = static_cast<int>(begin.size());
  vp_run out;
  const device_logits logits(pr);
  const device_grad grad(pr, logits);
  const int elem = dtype_bytes(c.dtype);
  dmem records(static_cast<size_t>(std::max<int64_t>(pr.n, 1) * k) * sizeof(gc::vocab_record));
  poison(records);
  std::vector<device_io> ios;
  ios.reserve(static_cast<size_t>(k));
  for (int r = 0; r < k; ++r) ios.emplace_back(pr);
  CUDA_REQUIRE(cudaDeviceSynchronize());
  auto slice = [&](int r) {
    gc::vocab_slice s;
    s.begin = begin[r];
    s.total = pr.v;
    s.rank = r;
    s.n_ranks = k;
    return s;
  };

  // 1. Every rank's records into its slot.
  out.stats_device = status::success;
  for (int r = 0; r < k; ++r) {
    gc::vocab_stats_args a;
    a.tokens = ios[r].tokens(pr, logits.ptr + begin[r] * elem, pr.ld);
    a.tokens.vocab = end[r] - begin[r];
    a.slice = slice(r);
    a.records = records.get<gc::vocab_record>() + static_cast<int64_t>(slot[r]) * pr.n;
    size_t bytes = 0;
    REQUIRE(gc::vocab_parallel_stats(nullptr, bytes, a, c.opt) == status::success);
    dmem ws(bytes);
    poison(ws);
    REQUIRE(gc::vocab_parallel_stats(ws.get(), bytes, a, c.opt) == status::success);
    const status dev = device_status_of(ws);
    if (dev != status::success) out.stats_device = dev;
  }
  out.records = download<uint8_t>(records.get(), records.bytes());

  // 3. Every rank's step: the combined outputs, and its slice of the gradient.
  for (int r = 0; r < k; ++r) {
    gc::vocab_train_args a;
    uint8_t* g = nullptr;
    if (c.grad) g = static_cast<uint8_t*>(grad.ptr) + begin[r] * grad.elem_bytes;
    a.train = ios[r].train(pr, logits.ptr + begin[r] * elem, pr.ld, g, grad.api_ld);
    a.train.tokens.vocab = end[r] - begin[r];
    a.slice = slice(r);
    a.records = records.get<gc::vocab_record>();
    gpu_result res;
    size_t bytes = 0;
    REQUIRE(gc::vocab_parallel_train_step(nullptr, bytes, a, c.opt) == status::success);
    dmem ws(bytes);
    poison(ws);
    // A caller's margin loss (user_loss.hpp) through the Loss overload.
    res.host_status = c.user_loss_beta > 0
                          ? gc::vocab_parallel_train_step(ws.get(), bytes, a, c.opt,
                                                          log_cosh_loss{c.user_loss_beta})
                          : gc::vocab_parallel_train_step(ws.get(), bytes, a, c.opt);
    REQUIRE(res.host_status == status::success);
    REQUIRE(gc::device_status(ws.get(), nullptr, &res.device) == status::success);
    CUDA_REQUIRE(cudaDeviceSynchronize());
    ios[r].download_into(pr, res);
    out.per_rank.push_back(std::move(res));
  }
  out.merged = out.per_rank[0];
  out.merged.grad_ld = grad.ld;
  if (c.grad) out.merged.grad = grad.download_all(pr);
  if (!c.in_place) out.merged.logits = download<uint8_t>(logits.ptr, pr.logits.size());
  return out;
}

/// The tiling of [0, V) by bounds [K + 1].
vp_run run_tiled(const problem& pr, const std::vector<int64_t>& bounds, const std::vector<int>& slot) {
  return run_vocab_parallel(pr, std::vector<int64_t>(bounds.begin(), bounds.end() - 1),
                            std::vector<int64_t>(bounds.begin() + 1, bounds.end()), slot);
}

/// K ranks against the reference; every rank the same bits; a second run
/// with the slots reversed (records arriving in another order) the same bits.
void check_vocab_case(const problem& pr, const std::vector<int64_t>& bounds) {
  INFO(describe(pr.cfg) << " ranks=" << bounds.size() - 1);
  const int k = static_cast<int>(bounds.size()) - 1;
  std::vector<int> slot(static_cast<size_t>(k));
  std::iota(slot.begin(), slot.end(), 0);
  const vp_run first = run_tiled(pr, bounds, slot);
  REQUIRE(first.stats_device == status::success);
  compare(pr, first.merged);
  for (int r = 1; r < k; ++r) {
    INFO("rank " << r << " against rank 0");
    gpu_result g = first.per_rank[r];
    g.grad = first.merged.grad;
    same_outputs(g, first.merged);
  }
  std::reverse(slot.begin(), slot.end());
  if (k > 2) std::rotate(slot.begin(), slot.begin() + 1, slot.end());
  const vp_run second = run_tiled(pr, bounds, slot);
  INFO("second run, records in another slot order");
  same_outputs(second.merged, first.merged);
  for (int r = 1; r < k; ++r) {  // every rank combined the reordered records alike
    INFO("second run, rank " << r << " against the first run");
    gpu_result g = second.per_rank[r];
    g.grad = first.merged.grad;
    same_outputs(g, first.merged);
  }
}

case_config vp_case(gc::dtype dt, uint64_t seed) {
  case_config c = small_case(dt, seed);
  c.vocab = 61;  // odd: no slice is a multiple of a vector width for long
  return c;
}

/// A problem whose labels include the last column (for the last slice).
void make_vp_problem(const case_config& c, problem& pr) {
  make_problem(c, pr);
  int planted = 0;
  for (int64_t t = 0; t < pr.offsets.back() && planted < 3; t += 4)
    if (pr.labels[t] != c.opt.ignore_index) pr.labels[t] = pr.v - 1, ++planted;
  set_reference(pr);
}

/// make_vp_problem(c), then check_vocab_case over `bounds`.
void check_vp_case(const case_config& c, const std::vector<int64_t>& bounds) {
  problem pr;
  make_vp_problem(c, pr);
  check_vocab_case(pr, bounds);
}

/// check_vp_case over k even slices.
void check_vp_case(const case_config& c, int k) {
  problem pr;
  make_vp_problem(c, pr);
  check_vocab_case(pr, even_bounds(pr.v, k));
}

}  // namespace

namespace {

void check_ranks_dtype(gc::dtype dt, int k, uint64_t seed) {
  case_config c = vp_case(dt, seed);
  c.in_place = dt == gc::dtype::bfloat16 && k == 3;
  c.grad_fp32 = dt == gc::dtype::float16 && k == 2;
  check_vp_case(c, k);
}

}  // namespace

// The fast cases (also under ASan/UBSan): every K in float32, each 16-bit
// dtype once (half with a float gradient, bfloat16 in place); the rest of
// the dtype × K matrix and every loss type are [matrix] (the emulator's slow
// set; all of them on a GPU).
TEST_CASE("vocab-parallel: K = 1, 2, 3, 8 ranks equal the reference", "[gpu][small][vocab_parallel]") {
  for (int k : {1, 2, 3, 8}) check_ranks_dtype(gc::dtype::float32, k, 9100 + static_cast<uint64_t>(k));
  check_ranks_dtype(gc::dtype::float16, 2, 9110);
  check_ranks_dtype(gc::dtype::bfloat16, 3, 9111);
}

TEST_CASE("vocab-parallel: every 16-bit dtype with every K", "[gpu][matrix][vocab_parallel]") {
  uint64_t seed = 9120;
  for (gc::dtype dt : {gc::dtype::float16, gc::dtype::bfloat16})
    for (int k : {1, 2, 3, 8}) check_ranks_dtype(dt, k, ++seed);
}

TEST_CASE("vocab-parallel: uneven slices, a width-1 slice, the label in the last column",
          "[gpu][small][vocab_parallel]") {
  case_config c = vp_case(gc::dtype::float32, 9201);
  c.token_weights = true;
  check_vp_case(c, {0, 1, 2, 19, 40, 60, 61});  // widths 1, 1, 17, 21, 20, 1
  case_config b = vp_case(gc::dtype::bfloat16, 9202);
  check_vp_case(b, {0, 45, 61});
}

TEST_CASE("vocab-parallel: every loss type", "[gpu][matrix][vocab_parallel]") {
  uint64_t seed = 9300;
  for (int li = 0; li < geopref::LOSS_TYPE_COUNT; ++li) {
    const auto t = static_cast<loss_type>(li);
    case_config c = vp_case(gc::dtype::float32, ++seed);
    c.masked_seqs = {};
    c.mask_prob = 0.1;
    c.opt.loss.type = t;
    c.opt.loss.beta = t == loss_type::simpo ? 2.0 : (t == loss_type::ipo || t == loss_type::cipo ||
                                                     t == loss_type::gipo) ? 0.5 : 0.1;
    if (t == loss_type::robust) c.opt.loss.epsilon = 0.2;
    if (t == loss_type::exo_pair) c.opt.loss.epsilon = 1e-3;
    if (t == loss_type::ropo || t == loss_type::gropo) c.opt.loss.alpha = 0.5, c.opt.loss.gamma = 0.3;
    c.opt.loss.bco_delta = 0.05;
    c.ref = !geopref::all_terms_reference_free(c.opt.loss);
    check_vp_case(c, 3);
  }
}

TEST_CASE("vocab-parallel: a caller's loss, a combination with sft and token weights",
          "[gpu][small][vocab_parallel]") {
  case_config u = vp_case(gc::dtype::float16, 9350);
  u.user_loss_beta = 0.3;
  check_vp_case(u, 3);
  case_config c = vp_case(gc::dtype::bfloat16, 9351);
  c.opt.loss.n_terms = 2;
  c.opt.loss.terms[0] = loss_type::dpo;
  c.opt.loss.term_weights[0] = 1.0;
  c.opt.loss.terms[1] = loss_type::sft;
  c.opt.loss.term_weights[1] = 0.5;
  c.token_weights = true;
  check_vp_case(c, 2);
}

TEST_CASE("vocab-parallel: a real vocabulary across 8 ranks", "[gpu][vocab][vocab_parallel]") {
  case_config c = vp_case(gc::dtype::bfloat16, 9400);
  c.vocab = 50257;
  c.seq_lens = {3, 4, 2, 3};
  c.extra_rows = 0;
  c.masked_seqs = {};
  check_vp_case(c, 8);
}

TEST_CASE("vocab-parallel: the forward-only combine equals the step's", "[gpu][small][vocab_parallel]") {
  case_config c = vp_case(gc::dtype::float16, 9500);
  c.opt.average_logps = true;
  problem pr;
  make_vp_problem(c, pr);
  const std::vector<int64_t> bounds = even_bounds(pr.v, 3);
  const vp_run step = run_tiled(pr, bounds, {0, 1, 2});
  device_io io(pr);  // no logits on the device: the combine needs only the records
  dmem records(static_cast<size_t>(pr.n * 3) * sizeof(gc::vocab_record));
  CUDA_REQUIRE(cudaMemcpy(records.get(), step.records.data(), step.records.size(), cudaMemcpyHostToDevice));
  gc::vocab_logps_args a;
  a.tokens = io.rows(pr);  // the combine reads no logits
  a.tokens.vocab = bounds[2] - bounds[1];
  a.seq_logps = io.seq_logps.get<float>();
  a.seq_counts = io.seq_counts.get<int64_t>();
  a.token_logps = io.token_logps.get<float>();
  a.lse = io.lse.get<float>();
  a.slice = gc::even_slice(pr.v, 1, 3, nullptr);
  a.records = records.get<gc::vocab_record>();
  dmem ws = GEOPREF_RUN(gc::vocab_parallel_logps, a, c.opt);
  const status dev = device_status_of(ws);
  CHECK(dev == status::success);
  gpu_result r;
  io.download_into(pr, r);
  CHECK(same_bits(r.seq_logps, step.merged.seq_logps));
  CHECK(same_bits(r.seq_counts, step.merged.seq_counts));
  CHECK(same_bits(r.token_logps, step.merged.token_logps));
  CHECK(same_bits(r.lse, step.merged.lse));
}

TEST_CASE("vocab-parallel: bad slices and bad gathered records are reported",
          "[gpu][small][vocab_parallel]") {
  case_config c = vp_case(gc::dtype::float32, 9600);
  c.grad = false;
  problem pr;
  make_problem(c, pr);
  // Scored rows with labels 22 (in the gap below) and 15 (in the overlap).
  int planted = 0;
  for (int64_t t = 0; t < pr.offsets.back() && planted < 2; ++t)
    if (pr.labels[t] != c.opt.ignore_index) pr.labels[t] = planted++ == 0 ? 22 : 15;
  set_reference(pr);
  const int64_t v = pr.v;
  SECTION("a good tiling passes (the control)") {
    const vp_run r = run_tiled(pr, {0, 20, 40, v}, {2, 0, 1});
    CHECK(r.stats_device == status::success);
    CHECK(r.merged.device == status::success);
  }
  SECTION("a rank's records twice, another's missing") {
    const vp_run r = run_tiled(pr, {0, 20, 40, v}, {0, 1, 1});
    CHECK(r.merged.device == status::invalid_vocab_records);
  }
  SECTION("a gap between slices: a label owned by no slice") {
    const vp_run r = run_vocab_parallel(pr, {0, 25, 40}, {20, 40, v}, {0, 1, 2});
    CHECK(r.stats_device == status::success);  // each slice alone is fine
    CHECK(r.merged.device == status::invalid_vocab_records);
  }
  SECTION("overlapping slices: a label owned twice") {
    const vp_run r = run_vocab_parallel(pr, {0, 10, 40}, {20, 40, v}, {0, 1, 2});
    CHECK(r.merged.device == status::invalid_vocab_records);
  }
  SECTION("host-side: slices outside [0, V), bad ranks, null records") {
    device_logits logits(pr);
    device_io io(pr);
    dmem records(static_cast<size_t>(pr.n * 2) * sizeof(gc::vocab_record));
    gc::vocab_stats_args a;
    a.tokens = io.tokens(pr, logits.ptr, pr.ld);
    a.tokens.vocab = 30;
    a.slice = gc::even_slice(v, 0, 2, nullptr);
    a.records = records.get<gc::vocab_record>();
    size_t bytes = 0;
    REQUIRE(gc::vocab_parallel_stats(nullptr, bytes, a, c.opt) == status::success);
    a.slice.begin = v - 29;  // past V
    CHECK(gc::vocab_parallel_stats(nullptr, bytes, a, c.opt) == status::invalid_vocab_records);
    a.slice = gc::even_slice(v, 0, 2, nullptr);
    a.slice.rank = 2;
    CHECK(gc::vocab_parallel_stats(nullptr, bytes, a, c.opt) == status::invalid_vocab_records);
    a.slice = gc::even_slice(v, 0, 2, nullptr);
    dmem ws(bytes);
    a.records = nullptr;
    CHECK(gc::vocab_parallel_stats(ws.get(), bytes, a, c.opt) == status::null_pointer);
    gc::vocab_train_args t;
    t.train = io.train(pr, logits.ptr, pr.ld, nullptr, 0);
    t.train.tokens.vocab = 30;
    t.slice = gc::even_slice(v, 0, 2, nullptr);
    REQUIRE(gc::vocab_parallel_train_step(nullptr, bytes, t, c.opt) == status::success);
    dmem tws(bytes);
    CHECK(gc::vocab_parallel_train_step(tws.get(), bytes, t, c.opt) == status::null_pointer);
  }
}

TEST_CASE("data-parallel options on the GPU path: the global NLL normaliser, metric sums",
          "[gpu][small][vocab_parallel]") {
  // pair_kernel's global sft coefficient against the reference's run_pairs
  // (whose exactness over data ranks tests/cpu/test_vocab_parallel.cpp
  // shows), alone and under vocab parallelism.
  uint64_t seed = 9700;
  for (int variant = 0; variant < 2; ++variant) {
    case_config c = vp_case(variant == 0 ? gc::dtype::float32 : gc::dtype::bfloat16, ++seed);
    c.masked_seqs = {};
    c.mask_prob = 0.1;
    c.opt.loss.n_terms = 2;
    c.opt.loss.terms[0] = loss_type::gdpo;
    c.opt.loss.term_weights[0] = 1.0;
    c.opt.loss.terms[1] = loss_type::sft;
    c.opt.loss.term_weights[1] = 0.5;
    c.opt.reduce = reduction::normalizer;
    c.opt.normalizer = 7.0;    // e.g. the global pair count
    c.opt.nll_tokens = 41.0;   // scored chosen tokens of every rank's live pairs
    c.opt.nll_weight = 5.5;    // their pairs' weights
    check_case(c);
    check_vp_case(c, 3);
  }
  // The metrics as sums: the means times P, and P.
  case_config c = vp_case(gc::dtype::float32, ++seed);
  problem pr;
  make_problem(c, pr);
  set_reference(pr);
  dmem sums(sizeof(geopref::metric_sums));
  poison(sums);
  const gpu_result r = run_gpu(pr, nullptr, 0, [&](void* w, size_t& b, const gc::train_args& a,
                                                    const options& o, cudaStream_t st) {
    gc::train_args with = a;
    with.stat_sums = sums.get<geopref::metric_sums>();
    return gc::train_step(w, b, with, o, st);
  });
  REQUIRE(r.host_status == status::success);
  const auto s = download<geopref::metric_sums>(sums.get(), 1)[0];
  CHECK(s.pairs == static_cast<double>(pr.p));
  const geopref::metrics m = geopref::metrics_from_sums(s);
  auto near = [](double a, double b) { return std::fabs(a - b) <= 4e-16 * (std::fabs(b) + 1e-300); };
  using M = geopref::metrics;
  for (double M::*f : {&M::rewards_chosen, &M::rewards_rejected, &M::rewards_accuracies,
                       &M::rewards_margins, &M::logps_chosen, &M::logps_rejected,
                       &M::calibration_error})
    CHECK(near(m.*f, r.stats.*f));
}

// A logit transform over K ranks (issue 24's mutation pass: the slice's
// forward ignored the transform without a failing fast test). compare()'s
// error model carries the transform (gpu_harness.cuh's transform_error_at);
// the records hold z' of the label and the slice's lse of z'. A scale map and
// a soft-cap, float32 over K = 3 (a width-1 slice holding labels) and
// bfloat16 over K = 2 (the MUFU tanh for 16-bit logits on a GPU).
TEST_CASE("vocab-parallel with a logit transform equals the reference",
          "[gpu][small][vocab_parallel][transform]") {
  const geopref::logit_transform maps[] = {{0.6, 0.0, 0.8}, {1.7, 2.5, 1.3}};
  uint64_t seed = 24400;
  for (const auto& tr : maps) {
    case_config c = vp_case(gc::dtype::float32, ++seed);
    c.logit_transform = tr;
    check_vp_case(c, {0, 30, 60, 61});
    case_config b = vp_case(gc::dtype::bfloat16, ++seed);
    b.logit_transform = tr;
    b.grad_fp32 = true;
    check_vp_case(b, 2);
  }
}
