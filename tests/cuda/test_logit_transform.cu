// tests/cuda/test_logit_transform.cu — the logit transform z' = c·tanh(s·z/c)/T
// (c = 0: s·z/T; options.hpp) through the sequence entries: train_step
// (loss, metrics, log-probs, gradient), sequence_logps and logits_grad
// against the CPU reference, element by element with gpu_harness.cuh's error
// model (which adds the transform's own error, transform_error_at); every
// dtype and map, split rows, in place, the float gradient; bitwise
// repeatability (check_case); the identity spelled out giving the plain
// kernels' bits; invalid transforms refused by every size query. The
// per-token entries are in test_token.cu, the fused-linear and vocab-parallel
// entries in test_fused_linear.cu and test_vocab_parallel.cu.
#include <catch2/catch.hpp>

#include <cmath>
#include <type_traits>
#include <vector>

#include "geopref/cuda/fused_linear.cuh"
#include "geopref/cuda/linear_token_logps.cuh"
#include "geopref/cuda/vocab_linear.cuh"
#include "geopref/cuda/vocab_parallel.cuh"
#include "gpu_harness.cuh"

using namespace geopref::test;
using geopref::loss_type;

namespace {

// A scale with a temperature (scale_map), Gemma's cap on logits of its size
// (softcap_map, mild), and a hard cap with all three set.
const geopref::logit_transform MAPS[] = {{0.5, 0.0, 0.8}, {1.0, 30.0, 1.0}, {1.7, 2.5, 1.3}};

// small_case with the transform and an upstream gradient of 1.
case_config transform_case(gc::dtype dt, const geopref::logit_transform& tr, uint64_t seed) {
  case_config c = small_case(dt, seed);
  c.grad_loss = 1.0;
  c.logit_transform = tr;
  return c;
}

}  // namespace

TEST_CASE("train_step with a logit transform, every dtype and map", "[gpu][small][transform]") {
  // Every (dtype, map) out of place with a misaligned base; in place once per
  // map (each in another dtype); split rows for the 16-bit soft-cap (the
  // MUFU's tanh) and the float one (tanhf). Kept to these for the sanitizer
  // build's time: the same kernels run in test_guards.cu's long rows.
  uint64_t seed = 21000;
  const gc::dtype dts[] = {gc::dtype::float32, gc::dtype::float16, gc::dtype::bfloat16};
  for (gc::dtype dt : dts)
    for (const auto& tr : MAPS) check_case(transform_case(dt, tr, ++seed));
  for (int m = 0; m < 3; ++m) {
    case_config c = transform_case(dts[(m + 1) % 3], MAPS[m], ++seed);
    c.in_place = true;
    check_case(c);
  }
  for (gc::dtype dt : {gc::dtype::bfloat16, gc::dtype::float32}) {
    // Split rows (V·elem over the split threshold at this N), token weights,
    // an fp32 gradient with its own stride, int32 indices.
    case_config c = transform_case(dt, MAPS[2], ++seed);
    c.vocab = 8203;
    c.pad = 0;
    c.misalign = 0;
    c.token_weights = true;
    c.grad_fp32 = true;
    c.grad_pad = 5;
    c.label_type = gc::index_type::int32;
    check_case(c);
  }
}

TEST_CASE("train_step with a logit transform: other losses, extreme logits", "[gpu][small][transform]") {
  uint64_t seed = 21100;
  // A combination with a length-normalised term, and ipo on averaged log-probs.
  case_config c = transform_case(gc::dtype::bfloat16, MAPS[2], ++seed);
  c.opt.loss.n_terms = 2;
  c.opt.loss.terms[0] = loss_type::cdpo;
  c.opt.loss.term_weights[0] = 1.0;
  c.opt.loss.terms[1] = loss_type::sft;
  c.opt.loss.term_weights[1] = 0.5;
  check_case(c);
  c = transform_case(gc::dtype::float32, MAPS[0], ++seed);
  c.opt.loss.type = loss_type::ipo;
  c.opt.average_logps = true;
  check_case(c);
  // ±1e4 and −∞ entries: a cap keeps every z' finite (±c/T).
  c = transform_case(gc::dtype::float32, MAPS[1], ++seed);
  c.extreme = true;
  check_case(c);
}

TEST_CASE("the identity transform spelled out runs the plain kernels, bit for bit",
          "[gpu][small][transform]") {
  case_config c = transform_case(gc::dtype::bfloat16, geopref::logit_transform{}, 21200);
  problem a;
  make_problem(c, a);
  set_reference(a);
  const gpu_result plain = run_gpu(a);
  c.logit_transform = {1.0, 0.0, 1.0};
  problem b;
  make_problem(c, b);
  set_reference(b);
  const gpu_result spelled = run_gpu(b);
  CHECK(same_bits(plain.loss, spelled.loss));
  CHECK(same_bits(plain.token_logps, spelled.token_logps));
  CHECK(same_bits(plain.grad, spelled.grad));
  // And a transform changes them (the case above cannot pass by accident).
  c.logit_transform = MAPS[0];
  problem t;
  make_problem(c, t);
  set_reference(t);
  CHECK_FALSE(same_bits(plain.token_logps, run_gpu(t).token_logps));
}

TEST_CASE("sequence_logps and logits_grad with a logit transform", "[gpu][small][transform]") {
  uint64_t seed = 21300;
  for (gc::dtype dt : {gc::dtype::float32, gc::dtype::bfloat16}) {
    case_config c = transform_case(dt, MAPS[2], ++seed);
    c.ref = false;
    problem pr;
    make_problem(c, pr);
    const gpu_result fused = run_gpu(pr);
    REQUIRE(fused.host_status == status::success);
    const device_logits logits(pr);
    const device_io io(pr);
    dmem seq(pr.s * sizeof(float)), lse(pr.n * sizeof(float));
    for (const dmem* d : {&seq, &lse}) poison(*d);
    gc::logps_args la;
    la.tokens = io.tokens(pr, logits.ptr, pr.ld);
    la.seq_logps = seq.get<float>();
    la.lse = lse.get<float>();
    dmem ws = GEOPREF_RUN(gc::sequence_logps, la, c.opt);
    CUDA_REQUIRE(cudaDeviceSynchronize());
    // The same forward kernels as train_step's: the same bits.
    CHECK(same_bits(download<float>(seq.get(), pr.s), fused.seq_logps));
    CHECK(same_bits(download<float>(lse.get(), pr.n), fused.lse));

    // logits_grad from train_step's lse and g_s: train_step's gradient.
    const dmem lse_in = upload(fused.lse), gs_in = upload(fused.grad_seq);
    dmem grad(pr.n * pr.v * static_cast<size_t>(dtype_bytes(dt)));
    gc::grad_args ga = grad_args_of(la.tokens, lse_in, gs_in, grad.get(), pr.v);
    const dmem ws2 = GEOPREF_RUN(gc::logits_grad, ga, c.opt);
    CUDA_REQUIRE(cudaDeviceSynchronize());
    CHECK(same_bits(download<uint8_t>(grad.get(), grad.bytes()), fused.grad));
  }
}

TEST_CASE("an invalid logit transform is refused by every size query", "[gpu][small][transform]") {
  case_config c = transform_case(gc::dtype::bfloat16, geopref::logit_transform{}, 21400);
  problem pr;
  make_problem(c, pr);
  const device_logits logits(pr);
  const device_io io(pr);
  const device_grad grad(pr, logits);
  for (const geopref::logit_transform& bad :
       {geopref::logit_transform{0.0, 0.0, 1.0}, geopref::logit_transform{-1.0, 0.0, 1.0},
        geopref::logit_transform{INFINITY, 0.0, 1.0}, geopref::logit_transform{1.0, -3.0, 1.0},
        geopref::logit_transform{1.0, NAN, 1.0}, geopref::logit_transform{1.0, 0.0, 0.0},
        geopref::logit_transform{1.0, 0.0, NAN}}) {
    INFO("s " << bad.scale << " c " << bad.softcap << " T " << bad.temperature);
    gc::train_args a = io.train(pr, logits.ptr, pr.ld, grad.ptr, grad.api_ld);
    a.tokens.logit_transform = bad;
    size_t bytes = 0;
    CHECK(gc::train_step(nullptr, bytes, a, c.opt) == status::invalid_logit_transform);
    gc::logps_args la;
    la.tokens = a.tokens;
    la.seq_logps = a.seq_logps;
    CHECK(gc::sequence_logps(nullptr, bytes, la, c.opt) == status::invalid_logit_transform);
    gc::grad_args ga;
    ga.tokens = a.tokens;
    ga.lse = a.lse;
    ga.grad_seq_logps = a.grad_seq_logps;
    ga.grad_logits = a.grad_logits;
    CHECK(gc::logits_grad(nullptr, bytes, ga, c.opt) == status::invalid_logit_transform);
  }
}

// The map each transform and dtype is run with, and its constants (issue
// 24's mutation pass: on the emulator both tanh flavours are tanhf, so
// softcap_map's FAST flag chosen the wrong way round, fast tanh.approx for
// float logits, gives the same numbers; only the map's type shows it). The
// constants are formed in double and rounded once (dispatch.cuh visit_map),
// so they are compared exactly.
TEST_CASE("visit_map: the map and its constants for each transform and dtype",
          "[gpu][small][transform]") {
  namespace gd = gc::detail;
  struct seen {
    int kind = -1;  // 0 identity, 1 scale, 2 soft-cap with tanhf, 3 soft-cap with tanh.approx
    float c[4] = {0, 0, 0, 0};
  };
  auto visit = [](gc::dtype dt, const geopref::logit_transform& tr) {
    seen r;
    const status st = gd::visit_dtype(dt, [&](auto tag) {
      using T = typename decltype(tag)::type;
      return gd::visit_map<T>(tr, [&](auto m) {
        using M = decltype(m);
        if constexpr (std::is_same_v<M, gd::identity_map>) {
          r.kind = 0;
        } else if constexpr (std::is_same_v<M, gd::scale_map>) {
          r.kind = 1;
          r.c[0] = m.a;
          r.c[1] = m.a_log2e;
        } else {
          r.kind = std::is_same_v<M, gd::softcap_map<true>> ? 3 : 2;
          r.c[0] = m.u;
          r.c[1] = m.k;
          r.c[2] = m.k_log2e;
          r.c[3] = m.slope;
        }
        return status::success;
      });
    });
    REQUIRE(st == status::success);
    return r;
  };
  const double log2e = 1.4426950408889634;
  for (gc::dtype dt : {gc::dtype::float32, gc::dtype::float16, gc::dtype::bfloat16}) {
    INFO(dtype_name(dt));
    CHECK(visit(dt, {}).kind == 0);
    CHECK(visit(dt, {1.0, 0.0, 1.0}).kind == 0);
    const seen s = visit(dt, {0.6, 0.0, 0.8});
    CHECK(s.kind == 1);
    CHECK(s.c[0] == static_cast<float>(0.6 / 0.8));
    CHECK(s.c[1] == static_cast<float>(0.6 / 0.8 * log2e));
    for (const geopref::logit_transform& tr :
         {geopref::logit_transform{1.7, 2.5, 1.3}, geopref::logit_transform{1.0, 30.0, 1.0}}) {
      INFO("s " << tr.scale << " c " << tr.softcap << " T " << tr.temperature);
      const seen k = visit(dt, tr);
      // tanh.approx (FAST) for 16-bit logits only: float logits need tanhf.
      CHECK(k.kind == (dt == gc::dtype::float32 ? 2 : 3));
      CHECK(k.c[0] == static_cast<float>(tr.scale / tr.softcap));
      CHECK(k.c[1] == static_cast<float>(tr.softcap / tr.temperature));
      CHECK(k.c[2] == static_cast<float>(tr.softcap / tr.temperature * log2e));
      CHECK(k.c[3] == static_cast<float>(tr.scale / tr.temperature));
    }
  }
}

// The forward's unrolled body (forward_kernel's FWD_UNROLL groups, whose
// row maximum is map.log2 of the packed words' maximum) with a transform.
// The long rows above are split to 512..1023 vectors a split, too few for
// a thread to reach the body, so a soft-cap's log2 without its tanh (the
// maximum taken on raw logits: ≈ 430 instead of ≈ 14 in base 2 for z ≈ 10
// under c = 30, every term then flushed to 0) went unseen. Here rows of 1023
// vectors in one split (test_guards.cu's max_words case): every thread but
// the last runs the body once. Every map, float32 and bfloat16, the
// gradient too, against the reference with the harness's error model.
TEST_CASE("a logit transform in the forward's unrolled body: rows of one split of 1023 vectors",
          "[gpu][small][transform]") {
  uint64_t seed = 24500;
  for (gc::dtype dt : {gc::dtype::float32, gc::dtype::bfloat16})
    for (const auto& tr : MAPS) {
      const int es = dtype_bytes(dt);
      case_config c = transform_case(dt, tr, ++seed);
      c.vocab = 1023 * (16 / es);
      c.pad = 0;
      c.misalign = 0;
      c.seq_lens = {1, 1, 1, 1};
      c.masked_seqs.clear();
      c.extra_rows = 0;
      c.mask_prob = 0.0;
      INFO(describe(c));
      REQUIRE(gc::detail::choose_splits(4, c.vocab, es) == 1);
      check_case(c);
    }
}

// The transform is declared once, in the vocab_rows block every rows
// struct embeds, so a slice of one entry's arguments for another (the
// vocab-parallel stats, nccl.cuh, the hidden-state primitive's rows as
// fused_linear's inputs) cannot drop it.
TEST_CASE("the argument blocks carry the logit transform", "[gpu][small][transform]") {
  static_assert(std::is_base_of_v<gc::vocab_rows, gc::token_inputs> &&
                std::is_base_of_v<gc::vocab_rows, gc::token_rows> &&
                std::is_base_of_v<gc::vocab_rows, gc::linear_inputs> &&
                std::is_base_of_v<gc::vocab_rows, gc::linear_token_rows> &&
                std::is_base_of_v<gc::vocab_rows, gc::sequence_rows>);
  const geopref::logit_transform tr{1.7, 2.5, 1.3};
  auto same = [&](const geopref::logit_transform& x) {
    return x.scale == tr.scale && x.softcap == tr.softcap && x.temperature == tr.temperature;
  };
  gc::token_inputs x;
  x.logit_transform = tr;
  gc::vocab_stats_args st;
  st.tokens = x;
  CHECK(same(st.tokens.logit_transform));
  gc::linear_inputs li;
  li.logit_transform = tr;
  gc::vocab_linear_stats_args ls;
  ls.in = li;
  CHECK(same(ls.in.logit_transform));
  gc::linear_token_rows lt_rows;
  lt_rows.logit_transform = tr;
  CHECK(same(gc::detail::unsequenced(lt_rows).logit_transform));
}
