// tests/cuda/test_gpu.cu — geopref::cuda against the CPU reference on seeded
// random problems: every loss, every dtype, awkward shapes and layouts,
// extreme logits, device-side errors, and one case with N·V > 2³¹.
// Tags: [small] the short cases scripts/gpu-check.sh runs under
// compute-sanitizer memcheck; [race] the few it runs under racecheck and
// synccheck; [large] the 4+ GB case. [vocab] (real vocabulary sizes) and
// [matrix] (every loss / dtype combination) take longest on the host
// emulator (dev/emu, which runs everything but [large]).
#include <catch2/catch.hpp>

#include <cstdio>

#include "gpu_harness.cuh"

using namespace geopref::test;
using geopref::loss_type;
using geopref::reduction;

namespace {

geopref::loss_config loss_of(loss_type t) {
  geopref::loss_config l;
  l.type = t;
  l.beta = 0.1;
  switch (t) {
    case loss_type::ropo:
    case loss_type::gropo: l.alpha = 0.5, l.gamma = 0.3; break;
    case loss_type::robust: l.epsilon = 0.2; break;
    case loss_type::exo_pair: l.epsilon = 1e-3; break;
    case loss_type::discopop: l.tau = 0.05; break;
    case loss_type::simpo: l.beta = 2.0, l.gamma = 0.5; break;
    case loss_type::ipo:
    case loss_type::cipo:
    case loss_type::gipo: l.beta = 0.5; break;
    default: break;
  }
  return l;
}

}  // namespace

TEST_CASE("small problems in every dtype, in and out of place", "[gpu][small]") {
  uint64_t seed = 100;
  for (gc::dtype dt : {gc::dtype::float32, gc::dtype::float16, gc::dtype::bfloat16})
    for_each_grad_layout(small_case(dt, 0), seed, check_case);
}

TEST_CASE("every loss, every reduction, plain and length-normalised", "[gpu][matrix]") {
  uint64_t seed = 1000;
  for (int li = 0; li < geopref::LOSS_TYPE_COUNT; ++li) {
    const auto t = static_cast<loss_type>(li);
    for (reduction r : {reduction::mean, reduction::sum, reduction::none, reduction::normalizer}) {
      for (bool avg : {false, true}) {
        case_config c;
        c.vocab = 300;
        c.pad = 4;
        c.seq_lens = {9, 3, 12, 7, 1, 10, 6, 8};
        c.opt.loss = loss_of(t);
        c.opt.reduce = r;
        c.opt.normalizer = 3.5;
        c.opt.average_logps = avg;
        c.ref = !geopref::is_reference_free(t);
        c.weights = true;
        c.grad_output = true;
        c.grad_loss = 1.25;
        c.seed = ++seed;
        check_case(c);
      }
    }
  }
}

TEST_CASE("every dtype, index type and gradient layout", "[gpu][matrix]") {
  uint64_t seed = 2000;
  for (gc::dtype dt : {gc::dtype::float32, gc::dtype::float16, gc::dtype::bfloat16})
    for (gc::index_type lt : {gc::index_type::int32, gc::index_type::int64})
      for (gc::index_type ot : {gc::index_type::int32, gc::index_type::int64})
        for (int layout = 0; layout < 3; ++layout) {
          case_config c;
          c.dtype = dt;
          c.label_type = lt;
          c.offset_type = ot;
          c.vocab = 1001;
          c.pad = layout == 0 ? 0 : 7;
          c.misalign = layout == 2 ? 3 : 0;
          c.seq_lens = {20, 13, 17, 9};
          c.in_place = layout == 1;
          c.grad_fp32 = layout == 2;
          c.grad_pad = layout == 2 ? 1 : 0;
          c.opt.loss.type = loss_type::gdpo;
          c.seed = ++seed;
          check_case(c);
        }
}

TEST_CASE("N = 1, V = 1 and V = 2", "[gpu][small]") {
  for (int64_t v : {1, 2}) {
    case_config c;
    c.vocab = v;
    c.seq_lens = {1, 0};  // N = 1 row, one empty sequence
    c.mask_prob = 0.0;
    c.seed = 3000 + static_cast<uint64_t>(v);
    check_case(c);
    c.dtype = gc::dtype::bfloat16;
    c.in_place = true;
    check_case(c);
  }
}

TEST_CASE("real vocabularies, rows split across blocks and not", "[gpu][vocab]") {
  {
    case_config c;  // GPT-2: few rows, so each row is split across blocks
    c.dtype = gc::dtype::float16;
    c.vocab = 50257;
    c.pad = 3;
    c.misalign = 1;
    c.seq_lens = {4, 3, 2, 3};
    c.seed = 4001;
    check_case(c);
  }
  {
    case_config c;  // Llama 3, bfloat16, in place
    c.dtype = gc::dtype::bfloat16;
    c.vocab = 128256;
    c.seq_lens = {7, 5, 6, 6};
    c.in_place = true;
    c.seed = 4002;
    check_case(c);
    c.in_place = false;
    c.grad_fp32 = true;
    c.pad = 8;
    c.seed = 4003;
    check_case(c);
  }
  {
    case_config c;  // fp32, 9 splits per row
    c.vocab = 20000;
    c.seq_lens = {3, 5};
    c.seed = 4004;
    check_case(c);
  }
  {
    case_config c;  // enough rows for one block per row (no split)
    c.dtype = gc::dtype::bfloat16;
    c.vocab = 50257;
    c.seq_lens = {600, 500, 550, 450};
    c.mask_prob = 0.3;
    c.seed = 4005;
    check_case(c);
  }
}

TEST_CASE("packed sequences: empty, all-masked, outside rows, explicit pairs", "[gpu]") {
  uint64_t seed = 5000;
  for (bool avg : {false, true}) {
    for (int64_t pairs : {-1, 0, 1, 11}) {
      case_config c = packed_case(pairs, ++seed);
      c.weights = true;
      c.opt.average_logps = avg;
      check_case(c);
    }
  }
  case_config c;  // no sequences at all: every row is outside, loss 0
  c.seq_lens = {};
  c.extra_rows = 5;
  c.seed = ++seed;
  check_case(c);
}

TEST_CASE("random layouts: shapes, strides, alignments, splits and options drawn together", "[gpu][matrix]") {
  // Combinations the structured cases do not pair up: any V (half of them
  // large enough for rows split across blocks), odd strides and base
  // offsets for logits and gradient, every index type, in place or not,
  // fp32 gradients, explicit pairs, length normalisation, any loss.
  std::mt19937_64 rng(12345);
  auto pick = [&](int64_t lo, int64_t hi) { return lo + static_cast<int64_t>(rng() % static_cast<uint64_t>(hi - lo + 1)); };
  for (int k = 0; k < 60; ++k) {
    case_config c;
    c.dtype = static_cast<gc::dtype>(pick(0, 2));
    c.label_type = pick(0, 1) ? gc::index_type::int32 : gc::index_type::int64;
    c.offset_type = pick(0, 1) ? gc::index_type::int32 : gc::index_type::int64;
    c.vocab = k % 2 == 0 ? pick(1, 700) : pick(4000, 12000);
    c.pad = pick(0, 9);
    c.misalign = pick(0, 7);
    c.seq_lens.clear();
    const int64_t n_seqs = 2 * pick(0, 4);
    for (int64_t s = 0; s < n_seqs; ++s) c.seq_lens.push_back(pick(0, 9));
    c.extra_rows = pick(0, 3);
    c.mask_prob = 0.25;
    c.explicit_pairs = pick(0, 2) == 0 ? pick(0, 6) : -1;
    if (n_seqs == 0 && c.explicit_pairs > 0) c.explicit_pairs = 0;  // pairs need sequences
    c.opt.loss = loss_of(static_cast<loss_type>(pick(0, geopref::LOSS_TYPE_COUNT - 1)));
    c.opt.average_logps = pick(0, 1) == 1;
    c.ref = !geopref::is_reference_free(c.opt.loss.type) && pick(0, 1) == 1;
    c.weights = pick(0, 1) == 1;
    c.grad_output = pick(0, 1) == 1;
    c.in_place = pick(0, 3) == 0;
    if (!c.in_place) {
      c.grad_fp32 = pick(0, 1) == 1;
      c.grad_pad = pick(0, 5);
      c.grad_misalign = pick(0, 5);
    }
    c.seed = 10000 + static_cast<uint64_t>(k);
    check_case(c);
  }
}

TEST_CASE("extreme logits: ±1e4, −inf entries, shifted rows", "[gpu]") {
  uint64_t seed = 6000;
  for (gc::dtype dt : {gc::dtype::float32, gc::dtype::float16, gc::dtype::bfloat16})
    for (bool in_place : {false, true}) {
      case_config c;
      c.dtype = dt;
      c.vocab = 513;
      c.seq_lens = {12, 9, 15, 11};
      c.extreme = true;
      c.in_place = in_place;
      c.opt.loss.type = loss_type::gipo;
      c.opt.loss.beta = 0.5;
      c.seed = ++seed;
      check_case(c);
    }
}

TEST_CASE("sequence_logps matches the reference and feeds train_step", "[gpu][small]") {
  for (bool avg : {false, true}) {
    case_config c = small_case(gc::dtype::bfloat16, avg ? 7001 : 7002);
    c.opt.average_logps = avg;
    c.ref = false;
    problem pr;
    make_problem(c, pr);
    ref_result ref;
    REQUIRE(run_reference(pr.ref_in, c.opt, false, ref) == status::success);

    dmem logits_mem(pr.logits.size() + 256);
    auto* logits = static_cast<uint8_t*>(logits_mem.get()) + c.misalign * 2;
    CUDA_REQUIRE(cudaMemcpy(logits, pr.logits.data(), pr.logits.size(), cudaMemcpyHostToDevice));
    dmem labels = upload(pr.labels), offsets = upload(pr.offsets);
    dmem out(pr.s * sizeof(float)), counts(pr.s * sizeof(int64_t)), tok(pr.n * sizeof(float)),
        lse(pr.n * sizeof(float));
    for (const dmem* d : {&out, &counts, &tok, &lse}) poison(*d);
    gc::logps_args a;
    a.tokens.logits = logits;
    a.tokens.logits_dtype = c.dtype;
    a.tokens.n_rows = pr.n;
    a.tokens.vocab = pr.v;
    a.tokens.ld = pr.ld;
    a.tokens.labels = labels.get();
    a.tokens.offsets = offsets.get();
    a.tokens.n_seqs = pr.s;
    a.seq_logps = out.get<float>();
    a.seq_counts = counts.get<int64_t>();
    a.token_logps = tok.get<float>();
    a.lse = lse.get<float>();
    dmem ws = GEOPREF_RUN(gc::sequence_logps, a, c.opt);
    const status dev = device_status_of(ws);
    REQUIRE(dev == status::success);
    const auto got = download<float>(out.get(), pr.s);
    const auto got_counts = download<int64_t>(counts.get(), pr.s);
    const auto got_tok = download<float>(tok.get(), pr.n);
    const auto got_lse = download<float>(lse.get(), pr.n);
    const int64_t rows_end = pr.offsets.back();
    checker ck_seq("sequence_logps seq_logps"), ck_tok("sequence_logps token_logps"),
        ck_lse("sequence_logps lse");
    for (int64_t s = 0; s < pr.s; ++s) {
      double e = 0;
      for (int64_t t = pr.offsets[s]; t < pr.offsets[s + 1]; ++t) {
        const bool scored = pr.labels[t] != c.opt.ignore_index;
        const double tl = eps_sum(pr.v) + 2 * U32 * std::fabs(ref.lse[t]);
        const double zy = scored ? pr.z[static_cast<size_t>(t * pr.ld + pr.labels[t])] : 0.0;
        const double tt = tl + 2 * U32 * (std::fabs(ref.token_logps[t]) + std::fabs(zy));
        ck_lse(t, got_lse[t], ref.lse[t], scored ? tl : 0.0);
        ck_tok(t, got_tok[t], ref.token_logps[t], scored ? tt : 0.0);
        if (scored) e += tt;
      }
      if (avg && ref.seq_counts[s] > 0) e /= static_cast<double>(ref.seq_counts[s]);
      ck_seq(s, got[s], ref.seq_logps[s], e + 2 * U32 * std::fabs(ref.seq_logps[s]));
      CHECK(got_counts[s] == ref.seq_counts[s]);
    }
    for (int64_t t = rows_end; t < pr.n; ++t) {
      ck_lse(t, got_lse[t], 0.0, 0.0);
      ck_tok(t, got_tok[t], 0.0, 0.0);
    }
    ck_seq.report();
    ck_tok.report();
    ck_lse.report();

    // The same logits as their own reference: train_step with these float
    // log-probs as ref_logps, checked against the reference given the same.
    c.ref = true;
    pr.cfg.ref = true;
    pr.ref = got;
    pr.ref_d.assign(got.begin(), got.end());
    pr.ref_in.ref_logps = pr.ref_d.data();
    compare(pr, run_gpu(pr));
  }
}

TEST_CASE("device-side errors are reported, without out-of-bounds access", "[gpu][small]") {
  struct bad {
    const char* what;
    status expected;
    void (*apply)(problem&);
  };
  const bad cases[] = {
      {"label == V", status::label_out_of_range, [](problem& p) { p.labels[2] = p.v; }},
      {"label < 0", status::label_out_of_range, [](problem& p) { p.labels[4] = -5; }},
      {"label out of range outside every sequence", status::label_out_of_range,
       [](problem& p) { p.labels[p.n - 1] = p.v + 100; }},
      {"decreasing offsets", status::invalid_offsets,
       [](problem& p) { p.offsets[2] = p.offsets[1] - 1; }},
      {"offsets past N", status::invalid_offsets, [](problem& p) { p.offsets.back() = p.n + 40; }},
      {"offsets[0] != 0", status::invalid_offsets, [](problem& p) { p.offsets[0] = 1; }},
      {"pair index == S", status::pair_index_out_of_range,
       [](problem& p) { p.pairs[1] = p.s; }},
      {"pair index < 0", status::pair_index_out_of_range, [](problem& p) { p.pairs[2] = -1; }},
      {"soft label NaN", status::soft_label_out_of_range,
       [](problem& p) { p.soft[1] = NAN; }},
      {"soft label > 1", status::soft_label_out_of_range, [](problem& p) { p.soft[0] = 1.5f; }},
      {"negative weight", status::invalid_weight, [](problem& p) { p.weights[0] = -1.0f; }},
      {"infinite weight", status::invalid_weight, [](problem& p) { p.weights[2] = INFINITY; }},
      {"NaN reference log-prob", status::invalid_reference, [](problem& p) { p.ref[3] = NAN; }},
      {"+inf reference log-prob", status::invalid_reference,
       [](problem& p) { p.ref[0] = INFINITY; }},
      {"infinite upstream gradient", status::invalid_upstream_grad,
       [](problem& p) { p.grad_out[0] = INFINITY; }},
  };
  uint64_t seed = 8000;
  for (const bad& b : cases) {
    INFO(b.what);
    case_config c = small_case(gc::dtype::float16, ++seed);
    c.explicit_pairs = 4;
    c.mask_prob = 0.0;
    c.masked_seqs = {};
    problem pr;
    make_problem(c, pr);
    set_reference(pr);
    b.apply(pr);
    const gpu_result g = run_gpu(pr);
    REQUIRE(g.host_status == status::success);
    CHECK(g.device == b.expected);
  }
  // The flag is reset by the next call: a clean problem reports success.
  case_config c = small_case(gc::dtype::float16, ++seed);
  problem pr;
  make_problem(c, pr);
  set_reference(pr);
  CHECK(run_gpu(pr).device == status::success);
}

TEST_CASE("a workspace one byte too small is rejected", "[gpu][small]") {
  case_config c = small_case(gc::dtype::float32, 9001);
  problem pr;
  make_problem(c, pr);
  set_reference(pr);
  const gpu_result g = run_gpu(pr, nullptr, 1);
  CHECK(g.host_status == status::workspace_too_small);
}

TEST_CASE("racecheck subset: split rows, block reductions, in place", "[gpu][race]") {
  case_config c = small_case(gc::dtype::bfloat16, 9201);
  c.vocab = 30000;  // rows split across blocks: forward, combine and backward splits
  c.seq_lens = {3, 2, 0, 4};
  c.misalign = 0;
  c.pad = 8;
  check_case(c);
  c = small_case(gc::dtype::float32, 9202);  // one block per row, scalar prologue, in place
  c.in_place = true;
  check_case(c);
}

TEST_CASE("results do not depend on the stream", "[gpu]") {
  case_config c = small_case(gc::dtype::bfloat16, 9101);
  c.vocab = 30000;  // split rows
  problem pr;
  make_problem(c, pr);
  set_reference(pr);
  cudaStream_t stream;
  CUDA_REQUIRE(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  const gpu_result a = run_gpu(pr, stream);
  CUDA_REQUIRE(cudaStreamDestroy(stream));
  const gpu_result b = run_gpu(pr);
  compare(pr, a);
  CHECK(same_bits(a.grad, b.grad));
  CHECK(same_bits(a.loss, b.loss));
}

// ---------------------------------------------------------------------------
namespace {

/// logits_grad over pr's logits (uploaded again, same layout and dtype as
/// run_gpu uses) from the lse and g_s a train_step returned. Returns the host
/// status; on success *grad holds the [N, grad_ld] gradient bytes (the logits
/// buffer when in place) and *device the recorded device status.
status run_logits_grad(const problem& pr, const std::vector<float>& lse_in,
                       const std::vector<float>& grad_seq_in, std::vector<uint8_t>* grad_out,
                       status* device, size_t workspace_shortfall = 0,
                       void (*tweak)(gc::grad_args&) = nullptr) {
  problem with_grad = pr;  // logits_grad always writes a gradient
  with_grad.cfg.grad = true;
  const device_logits logits(with_grad);
  const device_io io(with_grad);
  const device_grad grad(with_grad, logits);
  const dmem lse = upload(lse_in), grad_seq = upload(grad_seq_in);

  gc::grad_args a =
      grad_args_of(io.tokens(with_grad, logits.ptr, pr.ld), lse, grad_seq, grad.ptr, grad.api_ld);
  a.grad_float32 = pr.cfg.grad_fp32;
  if (tweak != nullptr) tweak(a);

  size_t bytes = 0;
  status st = gc::logits_grad(nullptr, bytes, a, pr.cfg.opt);
  if (st != status::success) return st;  // the size query's own rejection
  dmem ws(bytes);
  poison(ws);
  CUDA_REQUIRE(cudaDeviceSynchronize());
  size_t given = bytes - workspace_shortfall;
  st = gc::logits_grad(ws.get(), given, a, pr.cfg.opt);
  if (st != status::success) return st;
  *device = device_status_of(ws);
  *grad_out = grad.download_all(with_grad);
  return status::success;
}

/// train_step with a gradient against train_step without one (lse and g_s
/// requested) followed by logits_grad: the same kernel on the same float
/// inputs, so the gradients must agree bit for bit. The with-gradient run is
/// also checked against the reference.
void check_split_backward(const case_config& c) {
  INFO(describe(c));
  problem pr;
  make_problem(c, pr);
  set_reference(pr);
  const gpu_result fused = run_compared(pr);
  problem no_grad = pr;
  no_grad.cfg.grad = false;
  const gpu_result fwd = run_gpu(no_grad);
  REQUIRE(fwd.host_status == status::success);
  REQUIRE(fwd.device == status::success);
  CHECK(same_bits(fwd.lse, fused.lse));
  CHECK(same_bits(fwd.grad_seq, fused.grad_seq));
  std::vector<uint8_t> grad;
  status device = status::internal_error;
  REQUIRE(run_logits_grad(pr, fwd.lse, fwd.grad_seq, &grad, &device) == status::success);
  CHECK(device == status::success);
  CHECK(same_bits(grad, fused.grad));
}

}  // namespace

TEST_CASE("logits_grad after a train_step without gradient is bitwise the fused gradient", "[gpu][small]") {
  uint64_t seed = 9500;
  for (gc::dtype dt : {gc::dtype::float32, gc::dtype::float16, gc::dtype::bfloat16})
    for_each_grad_layout(small_case(dt, 0), seed, [](case_config c) {
      c.opt.average_logps = c.grad_fp32;  // averaged in the third layout
      check_split_backward(c);
    });
  case_config c = small_case(gc::dtype::bfloat16, ++seed);
  c.vocab = 30000;  // rows split across blocks (few rows, large V)
  c.seq_lens = {3, 2, 0, 4};
  c.misalign = 0;
  c.pad = 8;
  c.grad_output = false;
  check_split_backward(c);
  c.in_place = true;
  c.seed = ++seed;
  check_split_backward(c);
  c = small_case(gc::dtype::float16, ++seed);  // every sequence's rows masked
  c.masked_seqs = {0, 1, 2, 3, 4, 5};
  check_split_backward(c);
  // Per-token weights: the same row coefficients g_s · w_t in both paths.
  c = small_case(gc::dtype::bfloat16, ++seed);
  c.token_weights = true;
  c.opt.loss.n_terms = 2;
  c.opt.loss.terms[0] = loss_type::gdpo;
  c.opt.loss.terms[1] = loss_type::sft;
  c.opt.loss.term_weights[0] = 1.0;
  c.opt.loss.term_weights[1] = 0.5;
  check_split_backward(c);
  c.in_place = true;
  c.seed = ++seed;
  check_split_backward(c);
}

TEST_CASE("logits_grad: workspace, host-side and device-side errors", "[gpu][small]") {
  case_config c = small_case(gc::dtype::float16, 9601);
  problem pr;
  make_problem(c, pr);
  set_reference(pr);
  problem no_grad = pr;
  no_grad.cfg.grad = false;
  const gpu_result fwd = run_gpu(no_grad);
  REQUIRE(fwd.host_status == status::success);
  std::vector<uint8_t> grad;
  status device = status::internal_error;
  CHECK(run_logits_grad(pr, fwd.lse, fwd.grad_seq, &grad, &device, 1) ==
        status::workspace_too_small);
  CHECK(run_logits_grad(pr, fwd.lse, fwd.grad_seq, &grad, &device, 0,
                        [](gc::grad_args& a) { a.lse = nullptr; }) == status::null_pointer);
  CHECK(run_logits_grad(pr, fwd.lse, fwd.grad_seq, &grad, &device, 0,
                        [](gc::grad_args& a) { a.grad_seq_logps = nullptr; }) ==
        status::null_pointer);
  CHECK(run_logits_grad(pr, fwd.lse, fwd.grad_seq, &grad, &device, 0,
                        [](gc::grad_args& a) { a.grad_ld = a.tokens.vocab - 1; }) ==
        status::invalid_stride);
  // Gradient overlapping the logits without being in place (shifted by a row).
  CHECK(run_logits_grad(pr, fwd.lse, fwd.grad_seq, &grad, &device, 0, [](gc::grad_args& a) {
          a.grad_logits = const_cast<uint8_t*>(static_cast<const uint8_t*>(a.tokens.logits)) + a.tokens.ld * 2;
        }) == status::overlapping_buffers);
  // Gradient over the lse buffer.
  CHECK(run_logits_grad(pr, fwd.lse, fwd.grad_seq, &grad, &device, 0, [](gc::grad_args& a) {
          a.grad_logits = const_cast<float*>(a.lse);
          a.grad_ld = 0;
        }) == status::overlapping_buffers);
  // logits_grad reads opt.ignore_index alone: an options whose loss would be
  // refused elsewhere (beta < 0) gives the same gradient, bit for bit.
  problem bad_opt = pr;
  bad_opt.cfg.opt.loss.beta = -1.0;
  {
    std::vector<uint8_t> good_grad, bad_grad;
    status dev_good = status::cuda_error, dev_bad = status::cuda_error;
    REQUIRE(run_logits_grad(pr, fwd.lse, fwd.grad_seq, &good_grad, &dev_good) == status::success);
    REQUIRE(run_logits_grad(bad_opt, fwd.lse, fwd.grad_seq, &bad_grad, &dev_bad) ==
            status::success);
    CHECK(dev_good == status::success);
    CHECK(dev_bad == status::success);
    REQUIRE(good_grad.size() == bad_grad.size());
    CHECK(good_grad == bad_grad);
  }

  // Device-side: a bad label and bad offsets are flagged, as in train_step.
  problem bad = pr;
  bad.labels[2] = bad.v;
  REQUIRE(run_logits_grad(bad, fwd.lse, fwd.grad_seq, &grad, &device) == status::success);
  CHECK(device == status::label_out_of_range);
  bad = pr;
  bad.offsets[2] = bad.offsets[1] - 1;
  REQUIRE(run_logits_grad(bad, fwd.lse, fwd.grad_seq, &grad, &device) == status::success);
  CHECK(device == status::invalid_offsets);
  // A scored row's token weight that is not finite: logits_grad runs no
  // sequence pass, so its own per-row pass must flag it.
  for (const float w : {NAN, INFINITY}) {
    bad = pr;
    bad.cfg.token_weights = true;
    bad.tw.assign(static_cast<size_t>(bad.n), 1.0f);
    int64_t scored = 0;
    while (bad.labels[scored] == bad.cfg.opt.ignore_index) ++scored;  // rows 0.. lie in sequence 0
    REQUIRE(scored < bad.offsets[1]);
    bad.tw[scored] = w;
    REQUIRE(run_logits_grad(bad, fwd.lse, fwd.grad_seq, &grad, &device) == status::success);
    CHECK(device == status::invalid_weight);
  }
}

namespace {

__global__ void fill_kernel(__nv_bfloat16* z, int64_t count, uint64_t seed) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    uint64_t h = seed + static_cast<uint64_t>(i) * 0x9e3779b97f4a7c15ull;  // splitmix64
    h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ull;
    h = (h ^ (h >> 27)) * 0x94d049bb133111ebull;
    h ^= h >> 31;
    const float u = static_cast<float>(h >> 40) * 0x1p-24f;  // [0, 1)
    z[i] = __float2bfloat16_rn(8.0f * u - 4.0f);
  }
}

}  // namespace

// N·V > 2³¹: 17000 rows of a 128256-entry vocabulary in bfloat16 (4.4 GB),
// gradient in place. Logits are generated on the device; the rows around
// element 2³¹ (and byte 2³²) are checked against the reference.
TEST_CASE("N * V > 2^31 elements", "[gpu][large]") {
  const int64_t n = 17000, v = 128256, half = 8500;
  const size_t logits_bytes = static_cast<size_t>(n * v) * 2;
  size_t free_b = 0, total_b = 0;
  CUDA_REQUIRE(cudaMemGetInfo(&free_b, &total_b));
  if (free_b < logits_bytes + (size_t{1} << 30)) {
    WARN("not enough free device memory for the N*V > 2^31 case: skipped");
    return;
  }
  REQUIRE(n * v > (int64_t{1} << 31));
  dmem logits(logits_bytes);
  auto* z = logits.get<__nv_bfloat16>();
  geopref::cuda::detail::launch(fill_kernel, 4096, 256, nullptr, z, n * v, uint64_t{42});
  CUDA_REQUIRE(cudaGetLastError());

  std::mt19937_64 rng(11);
  std::vector<int64_t> labels(static_cast<size_t>(n));
  for (auto& y : labels) y = rng() % 10 == 0 ? -100 : static_cast<int64_t>(rng() % v);
  const int64_t row_2_31 = (int64_t{1} << 31) / v;  // the row holding element 2^31
  labels[row_2_31 + 1] = -100;                     // an unscored row past 2^31
  labels[n - 1] = v - 1;                           // the very last element is a label
  const std::vector<int64_t> offsets = {0, half, n};
  const std::vector<int64_t> sample = {0, 1, half - 1, half, row_2_31, row_2_31 + 1, n - 2, n - 1};

  // The sampled rows before the in-place backward overwrites them.
  std::vector<uint8_t> rows(sample.size() * static_cast<size_t>(v) * 2);
  for (size_t k = 0; k < sample.size(); ++k)
    CUDA_REQUIRE(cudaMemcpy(rows.data() + k * v * 2, z + sample[k] * v, v * 2, cudaMemcpyDeviceToHost));

  dmem d_labels = upload(labels), d_offsets = upload(offsets);
  dmem loss(sizeof(float)), seq(2 * sizeof(float)), gseq(2 * sizeof(float)),
      tok(n * sizeof(float)), lse(n * sizeof(float));
  const std::vector<float> soft = {0.8f};
  dmem d_soft = upload(soft);
  gc::train_args a;
  a.tokens.logits = z;
  a.tokens.logits_dtype = gc::dtype::bfloat16;
  a.tokens.n_rows = n;
  a.tokens.vocab = v;
  a.tokens.ld = v;
  a.tokens.labels = d_labels.get();
  a.tokens.offsets = d_offsets.get();
  a.tokens.n_seqs = 2;
  a.n_pairs = 1;
  a.soft_labels = d_soft.get<float>();
  a.loss = loss.get<float>();
  a.seq_logps = seq.get<float>();
  a.grad_seq_logps = gseq.get<float>();
  a.token_logps = tok.get<float>();
  a.lse = lse.get<float>();
  a.grad_logits = z;  // in place
  geopref::options opt;
  opt.loss.type = loss_type::dpo;
  dmem ws = GEOPREF_RUN(gc::train_step, a, opt);
  const status dev = device_status_of(ws);
  REQUIRE(dev == status::success);

  const auto got_tok = download<float>(tok.get(), n), got_lse = download<float>(lse.get(), n);
  const auto got_seq = download<float>(seq.get(), 2), got_g = download<float>(gseq.get(), 2);

  // Reference on the sampled rows, each its own sequence.
  std::vector<int64_t> sub_labels, sub_offsets = {0};
  for (int64_t t : sample) {
    sub_labels.push_back(labels[t]);
    sub_offsets.push_back(sub_offsets.back() + 1);
  }
  const int64_t dummy_pair[2] = {0, 0};
  ref_problem rp;
  rp.dtype = ref_dtype::bf16;
  rp.logits = rows.data();
  rp.n_rows = static_cast<int64_t>(sample.size());
  rp.vocab = v;
  rp.ld = v;
  rp.labels = sub_labels.data();
  rp.offsets = sub_offsets.data();
  rp.n_seqs = rp.n_rows;
  rp.n_pairs = 0;
  rp.pairs = dummy_pair;
  ref_result ref;
  REQUIRE(run_reference(rp, opt, false, ref) == status::success);

  checker ck_lse("lse (large)"), ck_tok("token_logps (large)"), ck_grad("grad (large)");
  for (size_t k = 0; k < sample.size(); ++k) {
    const int64_t t = sample[k];
    const bool scored = labels[t] != -100;
    const double tl = eps_sum(v) + 2 * U32 * std::fabs(ref.lse[k]);
    const double zy = scored ? decode(gc::dtype::bfloat16, rows.data() + (k * v + labels[t]) * 2) : 0.0;
    ck_lse(t, got_lse[t], ref.lse[k], scored ? tl : 0.0);
    ck_tok(t, got_tok[t], ref.token_logps[k], scored ? tl + 2 * U32 * (std::fabs(zy) + 1) : 0.0);
    std::vector<uint8_t> grad_row(static_cast<size_t>(v) * 2);
    CUDA_REQUIRE(cudaMemcpy(grad_row.data(), z + t * v, v * 2, cudaMemcpyDeviceToHost));
    const double g = got_g[t < half ? 0 : 1];
    for (int64_t col = 0; col < v; ++col) {
      const double got = decode(gc::dtype::bfloat16, grad_row.data() + col * 2);
      if (!scored) {
        ck_grad(t * v + col, got, 0.0, 0.0);
        continue;
      }
      const double d = decode(gc::dtype::bfloat16, rows.data() + (k * v + col) * 2) - ref.lse[k];
      const double p = std::exp(d);
      const double want = g * ((col == labels[t] ? 1.0 : 0.0) - p);
      const double tol = std::fabs(g) * p * (tl + (2 * std::fabs(d) + 6) * U32) +
                         (3 * U32 + 0x1p-8) * std::fabs(want) + 1e-40;
      ck_grad(t * v + col, got, want, tol);
    }
  }
  ck_lse.report();
  ck_tok.report();
  ck_grad.report();

  // Per-sequence sums of the GPU's own token log-probs (double, row order).
  for (int s = 0; s < 2; ++s) {
    // Both sums are double (different order): 1e-12 relative covers that;
    // the float output adds U32 relative.
    double sum = 0, abs_sum = 0;
    for (int64_t t = offsets[s]; t < offsets[s + 1]; ++t)
      if (labels[t] != -100) sum += got_tok[t], abs_sum += std::fabs(got_tok[t]);
    CHECK(std::fabs(got_seq[s] - sum) <= 1e-12 * abs_sum + U32 * std::fabs(sum));
  }
  // dpo with P = 1, mean: g_a = f'(h) = −β σ(−β h), g_b = −g_a; h from the
  // float seq_logps, whose rounding bounds the margin error.
  const double beta = opt.loss.beta, h = static_cast<double>(got_seq[0]) - got_seq[1];
  const double eh = 4 * U32 * (std::fabs(got_seq[0]) + std::fabs(got_seq[1]));
  const double ga = -beta * geopref::math::sigmoid(-beta * h);
  CHECK(std::fabs(got_g[0] - ga) <= beta * beta * 0.25 * eh + 4 * U32 * std::fabs(ga));
  CHECK(got_g[1] == -got_g[0]);
}

// ---------------------------------------------------------------------------
// The loss family beyond the margin (docs/math.md §5, "Terms beyond the
// margin") on the GPU path: every loss kind, transforms, the geometric form,
// combinations, per-token weights and a caller's own margin loss, each
// against the reference (whose own formulas are checked in
// tests/cpu/test_family.cpp).
namespace {

geopref::loss_config family_config(loss_type t) {
  geopref::loss_config l = loss_of(t);
  l.bco_delta = 0.05;
  return l;
}

case_config family_case(uint64_t seed) {
  case_config c = small_case(gc::dtype::float32, seed);
  c.masked_seqs = {};
  c.mask_prob = 0.1;
  return c;
}

void set_combination(case_config& c, std::initializer_list<std::pair<loss_type, double>> terms) {
  c.opt.loss.n_terms = 0;
  for (const auto& tw : terms) {
    c.opt.loss.terms[c.opt.loss.n_terms] = tw.first;
    c.opt.loss.term_weights[c.opt.loss.n_terms] = tw.second;
    ++c.opt.loss.n_terms;
  }
}

}  // namespace

TEST_CASE("every loss type on the GPU path, plain and averaged", "[gpu][small][family]") {
  uint64_t seed = 7000;
  for (int li = 0; li < geopref::LOSS_TYPE_COUNT; ++li) {
    const auto t = static_cast<loss_type>(li);
    for (int variant = 0; variant < 2; ++variant) {
      case_config c = family_case(++seed);
      c.opt.loss = family_config(t);
      c.opt.average_logps = variant == 1;
      c.opt.reduce = variant == 1 ? reduction::none : reduction::mean;
      if (variant == 1) c.explicit_pairs = 4, c.dtype = gc::dtype::bfloat16;
      // orpo: probability-1 sequences make its odds infinite; no masked-out
      // sequences (the harness masks none here) and enough vocabulary.
      c.ref = !geopref::all_terms_reference_free(c.opt.loss);
      check_case(c);
    }
  }
}

TEST_CASE("transforms and the geometric form of margin losses on the GPU path", "[gpu][small][family]") {
  uint64_t seed = 7100;
  for (loss_type t : {loss_type::dpo, loss_type::ipo, loss_type::hinge, loss_type::cdpo, loss_type::simpo})
    for (auto tr : {geopref::margin_transform::js, geopref::margin_transform::alpha})
      for (bool geo : {false, true}) {
        case_config c = family_case(++seed);
        c.opt.loss = family_config(t);
        c.opt.loss.transform = tr;
        c.opt.loss.f_alpha = 0.5;
        c.opt.loss.geometric = geo;
        c.ref = !geopref::is_reference_free(t);
        check_case(c);
      }
}

TEST_CASE("weighted combinations and per-token weights on the GPU path", "[gpu][small][family]") {
  uint64_t seed = 7200;
  for (int v = 0; v < 5; ++v) {
    case_config c = family_case(++seed);
    c.opt.loss = family_config(loss_type::dpo);
    switch (v) {
      case 0: set_combination(c, {{loss_type::dpo, 1.0}, {loss_type::sft, 0.5}}); break;
      case 1: set_combination(c, {{loss_type::orpo, 1.0}, {loss_type::sft, 1.0}}), c.ref = false; break;
      case 2: set_combination(c, {{loss_type::aot, 1.0}, {loss_type::bco_pair, 0.3}, {loss_type::sft, 0.2}});
              c.explicit_pairs = 5; break;
      case 3: set_combination(c, {{loss_type::aot_unpaired, 1.0}, {loss_type::apo_down, -0.5}, {loss_type::gdpo, 1.0}});
              c.opt.reduce = reduction::sum; break;
      case 4: c.opt.loss.type = loss_type::ipo; c.opt.average_logps = true; break;
    }
    for (bool tw : {false, true}) {
      c.token_weights = tw;
      c.seed = ++seed;
      check_case(c);
    }
  }
  // Token weights in place and in half precision, and logits_grad with them.
  case_config c = family_case(++seed);
  c.token_weights = true;
  c.in_place = true;
  c.dtype = gc::dtype::float16;
  check_case(c);
}

TEST_CASE("a caller's own margin loss through train_step<Loss>", "[gpu][small][family]") {
  uint64_t seed = 7300;
  for (int v = 0; v < 3; ++v) {
    case_config c = family_case(++seed);
    c.user_loss_beta = 0.7;
    c.opt.loss = family_config(loss_type::dpo);
    if (v == 1) c.opt.loss.geometric = true;                      // its geometric form
    if (v == 2) set_combination(c, {{loss_type::dpo, 1.0}, {loss_type::sft, 0.25}}), c.token_weights = true;
    check_case(c);
  }
}

TEST_CASE("the new losses: device-side errors and NaN stay in bounds", "[gpu][small][family]") {
  // A NaN token weight on a scored row, a pair index out of range and a NaN
  // soft label with sorted and batch terms: the status is recorded, nothing
  // is written out of bounds (the emulator and sanitizers check that).
  for (loss_type t : {loss_type::aot, loss_type::sft, loss_type::nca_pair}) {
    INFO(geopref::loss_name(t));
    case_config c = family_case(7400);
    c.opt.loss = family_config(t);
    c.ref = !geopref::all_terms_reference_free(c.opt.loss);
    c.token_weights = true;
    problem pr;
    make_problem(c, pr);
    set_reference(pr);
    int64_t row = 0;
    while (pr.labels[row] == c.opt.ignore_index) ++row;
    pr.tw[row] = NAN;
    gpu_result r = run_gpu(pr);
    CHECK(r.host_status == status::success);
    CHECK(r.device == status::invalid_weight);

    case_config e = family_case(7401);
    e.opt.loss = family_config(t);
    e.ref = !geopref::all_terms_reference_free(e.opt.loss);
    e.explicit_pairs = 4;
    problem pe;
    make_problem(e, pe);
    set_reference(pe);
    pe.pairs[3] = 99;
    pe.soft[1] = NAN;
    gpu_result re = run_gpu(pe);
    CHECK(re.device == status::pair_index_out_of_range);
  }
  // Host-side: the geometric flag on a loss without a margin, a reference
  // with only reference-free terms.
  case_config h = family_case(7402);
  h.opt.loss = family_config(loss_type::apo_zero);
  h.opt.loss.geometric = true;
  size_t bytes = 0;
  gc::train_args a;
  a.tokens.n_rows = 0;
  a.tokens.vocab = 1;
  a.tokens.ld = 1;
  CHECK(gc::train_step(nullptr, bytes, a, h.opt) == status::invalid_loss_option);
  // A null stream spelled `nullptr` is the stream, not a loss.
  CHECK(gc::train_step(nullptr, bytes, a, h.opt, nullptr) == status::invalid_loss_option);
  options free;
  h.opt.loss.geometric = false;
  set_combination(h, {{loss_type::orpo, 1.0}, {loss_type::sft, 1.0}});
  free.loss = h.opt.loss;
  float dummy = 0;
  a.ref_logps = &dummy;
  CHECK(gc::train_step(nullptr, bytes, a, free) == status::reference_not_allowed);
}
