// tests/cuda/test_fused_linear.cu — geopref::cuda::fused_linear_step and
// fused_linear_logps (geopref/cuda/fused_linear.cuh) against the CPU
// reference (reference/fused_linear.hpp, in double) and against the unfused
// path (one GEMM for all logits, train_step, then the two gradient GEMMs),
// on awkward shapes; bad inputs; the workspace against N·V; determinism.
// Runs on a GPU and, through dev/emu's cublas_v2.h, on the host emulator.
//
// Error model (per element, on top of gpu_harness.cuh's for the kernels).
// The reference forms Z = H·Wᵀ + b exactly from the rounded inputs; the GPU
// accumulates the GEMM in fp32 and rounds Z to the input dtype, as a linear
// layer would. So each logit carries
//   e_z(t) = u_T · max_v |z_tv| + (Hd + 2) · u · max_v (Σ_k |h_tk w_vk| + |b_v|),
// u_T the dtype's unit roundoff (2⁻⁸ bfloat16, 2⁻¹¹ half, 0 float: fp32 is
// counted by the second term, the GEMM's a priori bound γ_{Hd+2}). Then:
//   * lse_t moves by ≤ e_z(t) (a softmax-weighted mean of the logit errors),
//     ℓ_t by ≤ 2 e_z(t); plus the kernels' own fp32 error (eps_sum, 4u|·|).
//   * L_s: Σ_{t∈s} w_t err(ℓ_t) (÷ n_s when averaged) + 2u|L_s|.
//   * the loss: Σ_s |g_s| err(L_s), doubled for the curvature over the
//     interval (err(L) ≪ 1/β here), plus ½ K (err(L_a) + err(L_b))² per pair
//     (where f' ≈ 0), + 2u|loss|; g_s: K bounds the loss's second
//     derivative (dpo's |f''| ≤ β²/4; every other loss's in curvature_of),
//     so err(g_s) ≤ K · (w/norm) · (err(L_a) + err(L_b)) (·|2p̂−1|² ≤ 1 for
//     the geometric form) + 2u|g_s|.
//   * G_tv = c_t(𝟙 − p_tv), c_t = g_s w_t: |c| p (err(z) + err(lse)) · 1.01 +
//     err(c)|𝟙 − p| + (u_T + 3u)|G| (G is rounded to the input dtype before
//     the gradient GEMMs: that is the unfused path's G too).
//   * grad_H = G·W: Σ_v err(G_tv)|w_vk| + (V + 2) u Σ_v |G_tv w_vk| + u_T|grad_H|.
//   * grad_W = Gᵀ·H over chunks: Σ_t err(G_tv)|h_tk| + (N + 2) u Σ_t |G_tv h_tk|
//     + chunks · u_out · Σ_t |G_tv h_tk| (u_out = 0 for a float grad_weight;
//     each chunk's accumulation rounds once otherwise).
//   * grad_b: Σ_t err(G_tv) + (N + 2) u Σ_t |G_tv|.
// Against the unfused path each side is within the bound of the exact value,
// so the two differ by at most twice it.
#include <catch2/catch.hpp>
#include <cublas_v2.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <tuple>
#include <vector>

#include "geopref/cuda/fused_linear.cuh"
#include "geopref/cuda/vocab_linear.cuh"
#include "gpu_harness.cuh"
#include "linear_bridge.hpp"
#include "linear_harness.cuh"

using namespace geopref::test;
using geopref::loss_type;
using geopref::support::linear_ref_problem;
using geopref::support::linear_ref_result;

namespace {

struct lin_config {
  gc::dtype dtype = gc::dtype::float32;
  int64_t pairs = 3, max_len = 4;  // packed sequences of 0..max_len rows
  int64_t hidden = 8, vocab = 37;  // 37: not a multiple of any vector width
  int64_t chunk_rows = 4;          // the budget, in rows
  bool bias = true, token_weights = false, accumulate = false, gw_float32 = true;
  bool explicit_pairs = false;
  int64_t pad = 0;  // extra elements of each H / W / grad_hidden row (strides)
  loss_type loss = loss_type::gdpo;
  // The loss plus TRL's sft term (weight 1): couples the batch through the
  // chosen-token count. Its g_s part is a constant per sequence, so the error
  // model's curvature bound (the margin term's) still covers g_s.
  bool with_sft = false;
  // Margins from L̄_s = L_s / n_s: err(L̄_s) ≤ err(L_s), so the model's
  // un-divided L_s bound stays a valid (looser) bound.
  bool average_logps = false;
  double beta = 0.5;
  uint64_t seed = 1;
  // The rest of the loss family ("fused linear: the loss family" below).
  // terms: a weighted combination replacing `loss` (and with_sft) when not
  // empty. gamma (simpo), epsilon (robust, exo_pair), bco_delta (bco_pair)
  // as loss_config.
  std::vector<std::pair<loss_type, double>> terms;
  double gamma = 0.0, epsilon = 0.0, bco_delta = 0.0;
  double alpha = 1.0, tau = 0.05;  // ropo / gropo's α, discopop's τ (loss_config's defaults)
  geopref::reduction reduce = geopref::reduction::mean;
  bool pair_weights = false;  // per-pair weights w_i in [0.5, 1.5)
  bool grad_output = false;   // reduction::none's upstream [P], |g_i| in [0.5, 1.5), both signs
  double grad_loss = 1.0;
  double user_loss = 0.0;     // > 0: user_loss.hpp's log_cosh_loss{user_loss}, the Loss overloads
  // The logit transform z' = c·tanh(s·z/c)/T applied to every Z (options.hpp;
  // the identity by default). bounds_of carries its error (see there).
  geopref::logit_transform tr{};
};

std::string describe(const lin_config& c) {
  std::ostringstream o;
  o << dtype_name(c.dtype) << " P=" << c.pairs << " Hd=" << c.hidden << " V=" << c.vocab
    << " chunk=" << c.chunk_rows << " bias=" << c.bias << " tw=" << c.token_weights
    << " acc=" << c.accumulate << " gw32=" << c.gw_float32 << " pairs=" << c.explicit_pairs
    << " pad=" << c.pad << " loss=" << geopref::loss_name(c.loss) << (c.with_sft ? "+sft" : "")
    << " avg=" << c.average_logps << " seed=" << c.seed;
  for (const auto& t : c.terms) o << " " << t.second << "·" << geopref::loss_name(t.first);
  if (c.reduce == geopref::reduction::none) o << " reduce=none";
  if (c.pair_weights) o << " weights";
  if (c.grad_output) o << " grad_output";
  if (c.grad_loss != 1.0) o << " grad_loss=" << c.grad_loss;
  if (c.user_loss > 0) o << " user_loss=" << c.user_loss;
  describe_transform(o, c.tr);
  return o.str();
}

/// A problem: rounded inputs as bytes (device layout, with row padding) and
/// as doubles (dense), the token rows and pair inputs.
struct lin_problem {
  lin_config c;
  int64_t N = 0, S = 0, ldh = 0;
  std::vector<uint8_t> Hb, Wb, bb;  // [N, ldh], [V, ldh], [V]
  std::vector<double> H, W, b;      // [N, Hd], [V, Hd], [V]
  std::vector<int64_t> labels, offsets, pairs;
  std::vector<float> soft, ref, token_weights, weights, gout;
  std::vector<double> soft_d, ref_d, tw_d, weights_d, gout_d;
  bool no_ref = false;  // every term reference-free (simpo, ...): no ref_logps passed
  /// Pair i's two sequences (the default layout: i and P + i).
  int64_t chosen(int64_t i) const { return c.explicit_pairs ? pairs[2 * i] : i; }
  int64_t rejected(int64_t i) const { return c.explicit_pairs ? pairs[2 * i + 1] : c.pairs + i; }
};

geopref::options options_of(const lin_config& c);

lin_problem make_lin(const lin_config& c) {
  std::mt19937_64 rng(c.seed);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  lin_problem p;
  p.c = c;
  p.no_ref = geopref::all_terms_reference_free(options_of(c).loss);
  p.S = c.explicit_pairs ? 2 * c.pairs + 1 : 2 * c.pairs;
  p.offsets.assign(1, 0);
  for (int64_t s = 0; s < p.S; ++s)
    p.offsets.push_back(p.offsets.back() +
                        static_cast<int64_t>(rng() % static_cast<uint64_t>(c.max_len + 1)));
  p.N = p.offsets.back() + 1;  // a trailing row outside every sequence
  p.ldh = c.hidden + c.pad;
  // Logits O(2): |h|, |w| ≤ 1.5/√Hd.
  const double scale = 1.5 / std::sqrt(static_cast<double>(c.hidden));
  fill(c.dtype, rng, scale, p.N, c.hidden, p.ldh, p.Hb, p.H);
  fill(c.dtype, rng, scale * 3, c.vocab, c.hidden, p.ldh, p.Wb, p.W);
  if (c.bias) fill(c.dtype, rng, 0.5, 1, c.vocab, c.vocab, p.bb, p.b);
  for (int64_t t = 0; t < p.N; ++t)
    p.labels.push_back(unit(rng) < 0.15 ? -100
                                        : static_cast<int64_t>(rng() % static_cast<uint64_t>(c.vocab)));
  for (int64_t i = 0; i < c.pairs; ++i) {
    p.soft.push_back(static_cast<float>(unit(rng)));
    p.soft_d.push_back(p.soft.back());
  }
  for (int64_t s = 0; s < p.S; ++s) {
    p.ref.push_back(static_cast<float>(-4.0 * unit(rng)));
    p.ref_d.push_back(p.ref.back());
  }
  if (c.explicit_pairs)
    for (int64_t i = 0; i < 2 * c.pairs; ++i)
      p.pairs.push_back(static_cast<int64_t>(rng() % static_cast<uint64_t>(p.S)));
  if (c.token_weights)
    for (int64_t t = 0; t < p.N; ++t) {
      p.token_weights.push_back(static_cast<float>(0.5 + unit(rng)));
      p.tw_d.push_back(p.token_weights.back());
    }
  // (Drawn last, so the cases above keep their problems.)
  if (c.pair_weights)
    for (int64_t i = 0; i < c.pairs; ++i) {
      p.weights.push_back(static_cast<float>(0.5 + unit(rng)));
      p.weights_d.push_back(p.weights.back());
    }
  if (c.grad_output)
    for (int64_t i = 0; i < c.pairs; ++i) {
      const double m = 0.5 + unit(rng);
      p.gout.push_back(static_cast<float>(rng() % 2 == 0 ? m : -m));
      p.gout_d.push_back(p.gout.back());
    }
  return p;
}

geopref::options options_of(const lin_config& c) {
  geopref::options opt;
  opt.loss.type = c.loss;
  opt.loss.beta = c.beta;
  opt.loss.gamma = c.gamma;
  opt.loss.epsilon = c.epsilon;
  opt.loss.bco_delta = c.bco_delta;
  opt.loss.alpha = c.alpha;
  opt.loss.tau = c.tau;
  opt.reduce = c.reduce;
  opt.average_logps = c.average_logps;
  if (!c.terms.empty()) {
    opt.loss.n_terms = static_cast<int>(c.terms.size());
    for (size_t k = 0; k < c.terms.size(); ++k) {
      opt.loss.terms[k] = c.terms[k].first;
      opt.loss.term_weights[k] = c.terms[k].second;
    }
  } else if (c.with_sft) {
    opt.loss.n_terms = 2;
    opt.loss.terms[0] = c.loss;
    opt.loss.terms[1] = loss_type::sft;
    opt.loss.term_weights[0] = 1.0;
    opt.loss.term_weights[1] = 1.0;
  }
  return opt;
}

/// What one run returns, every value as double (and the gradients' bits).
struct lin_result : linear_grads {
  double loss = 0;                  // the loss; pair 0's under reduction::none
  std::vector<double> losses;       // [P] under reduction::none
  std::vector<double> seq_logps, lse, token_logps, grad_seq;
};

/// Device copies of a problem's inputs.
struct lin_device {
  dmem H, W, b, labels, offsets, pairs, soft, ref, tw, weights, gout;
  explicit lin_device(const lin_problem& p)
      : H(upload(p.Hb)), W(upload(p.Wb)), b(upload(p.bb)), labels(upload(p.labels)),
        offsets(upload(p.offsets)), pairs(upload(p.pairs)), soft(upload(p.soft)),
        ref(upload(p.ref)), tw(upload(p.token_weights)), weights(upload(p.weights)),
        gout(upload(p.gout)) {}
};

/// The inputs after the logits, common to the fused (linear_train_args) and
/// the unfused (train_args) entries: `rows` is a.in or a.tokens.
template <class Args, class Rows>
void set_sequences_and_pairs(Args& a, Rows& rows, const lin_problem& p, const lin_device& d) {
  const lin_config& c = p.c;
  rows.logit_transform = c.tr;
  rows.labels = d.labels.get();
  rows.offsets = d.offsets.get();
  rows.n_seqs = p.S;
  rows.token_weights = c.token_weights ? static_cast<const float*>(d.tw.get()) : nullptr;
  a.n_pairs = c.pairs;
  a.pairs = c.explicit_pairs ? static_cast<const int64_t*>(d.pairs.get()) : nullptr;
  a.soft_labels = static_cast<const float*>(d.soft.get());
  a.ref_logps = p.no_ref ? nullptr : static_cast<const float*>(d.ref.get());
  a.weights = c.pair_weights ? static_cast<const float*>(d.weights.get()) : nullptr;
  a.grad_output = c.grad_output ? static_cast<const float*>(d.gout.get()) : nullptr;
  a.grad_loss = c.grad_loss;
}

gc::linear_train_args train_args_of(const lin_problem& p, const lin_device& d) {
  const lin_config& c = p.c;
  gc::linear_train_args a;
  a.in.hidden = d.H.get();
  a.in.ld_hidden = p.ldh;
  a.in.weight = d.W.get();
  a.in.ld_weight = p.ldh;
  a.in.bias = c.bias ? d.b.get() : nullptr;
  a.in.type = c.dtype;
  a.in.n_rows = p.N;
  a.in.hidden_size = c.hidden;
  a.in.vocab = c.vocab;
  set_sequences_and_pairs(a, a.in, p, d);
  const int64_t per16 = 16 / dtype_bytes(c.dtype);
  const int64_t ldc = (c.vocab + per16 - 1) / per16 * per16;
  a.in.chunk_bytes = static_cast<size_t>(c.chunk_rows * ldc * dtype_bytes(c.dtype));
  return a;
}

/// Poisoned outputs of the right sizes.
struct lin_outputs {
  dmem loss, seq, lse, tlp, gseq, gh, gw, gb;
  lin_outputs(const lin_problem& p)
      : loss(static_cast<size_t>(n_losses(p)) * 4), seq(static_cast<size_t>(p.S) * 4 + 4),
        lse(static_cast<size_t>(p.N) * 4),
        tlp(static_cast<size_t>(p.N) * 4), gseq(static_cast<size_t>(p.S) * 4 + 4),
        gh(static_cast<size_t>(p.N * p.ldh * dtype_bytes(p.c.dtype))),
        gw(static_cast<size_t>(p.c.vocab * p.ldh * (p.c.gw_float32 ? 4 : dtype_bytes(p.c.dtype)))),
        gb(static_cast<size_t>(p.c.vocab) * 4) {
    for (const dmem* m : {&loss, &seq, &lse, &tlp, &gseq, &gh, &gw, &gb}) poison(*m);
  }
  void attach(gc::linear_step_args& a, const lin_problem& p) {
    a.loss = static_cast<float*>(loss.get());
    a.seq_logps = static_cast<float*>(seq.get());
    a.lse = static_cast<float*>(lse.get());
    a.token_logps = static_cast<float*>(tlp.get());
    a.grad_seq_logps = static_cast<float*>(gseq.get());
    a.grad_hidden = gh.get();
    a.ld_grad_hidden = p.ldh;
    a.grad_weight = gw.get();
    a.ld_grad_weight = p.ldh;
    a.grad_weight_float32 = p.c.gw_float32;
    a.grad_bias = p.c.bias ? static_cast<float*>(gb.get()) : nullptr;
    a.accumulate = p.c.accumulate;
  }
  static int64_t n_losses(const lin_problem& p) {
    return p.c.reduce == geopref::reduction::none ? std::max<int64_t>(p.c.pairs, 1) : 1;
  }
  lin_result read(const lin_problem& p) const {
    const lin_config& c = p.c;
    lin_result r;
    auto to_d = [](const std::vector<float>& f) { return std::vector<double>(f.begin(), f.end()); };
    r.losses = to_d(download<float>(loss.get(), static_cast<size_t>(n_losses(p))));
    r.loss = r.losses[0];
    r.seq_logps = to_d(download<float>(seq.get(), static_cast<size_t>(p.S)));
    r.lse = to_d(download<float>(lse.get(), static_cast<size_t>(p.N)));
    r.token_logps = to_d(download<float>(tlp.get(), static_cast<size_t>(p.N)));
    r.grad_seq = to_d(download<float>(gseq.get(), static_cast<size_t>(p.S)));
    r.read(gh, gw, gb, c.dtype, c.gw_float32, c.bias, p.N, c.vocab, c.hidden, p.ldh);
    return r;
  }
};

/// A fused-linear call's inputs on the device, its poisoned outputs and its
/// arguments pointing at both (with the handle `h`).
struct lin_call {
  lin_device d;
  lin_outputs o;
  gc::linear_train_args a;
  lin_call(const lin_problem& p, cublasHandle_t h) : d(p), o(p), a(train_args_of(p, d)) {
    a.in.cublas = h;
    o.attach(a, p);
  }
};

/// A previous micro-batch's gradient in grad_weight and grad_bias.
void preload_prior(const lin_problem& p, lin_outputs& o, float prior) {
  const lin_config& c = p.c;
  preload_prior(o.gw, c.gw_float32 ? gc::dtype::float32 : c.dtype, o.gb, c.vocab, prior);
}

/// What an accumulating call finds in grad_weight / grad_bias (preload_prior).
constexpr float PRIOR = 0.25f;

/// fused_linear_step with the built-in losses, or the caller's through the
/// Loss overload, on an exact workspace (run_exact: `ws_bytes` gets its size).
void step_fused(const lin_config& c, const gc::linear_train_args& a, const geopref::options& opt,
                size_t* ws_bytes = nullptr) {
  run_exact(
      [&](void* w, size_t& n) {
        return c.user_loss > 0 ? gc::fused_linear_step(w, n, a, opt, log_cosh_loss{c.user_loss})
                               : gc::fused_linear_step(w, n, a, opt);
      },
      ws_bytes);
}

/// The outputs; with `accumulate`, PRIOR subtracted again. Exact for a float
/// grad_weight / grad_bias only up to one rounding of the sum: the bound adds
/// u_out·prior (see compare()).
lin_result read_fused(const lin_problem& p, const lin_outputs& o) {
  lin_result r = o.read(p);
  if (p.c.accumulate) {
    for (auto& x : r.gw) x -= PRIOR;
    for (auto& x : r.gb) x -= PRIOR;
  }
  return r;
}

/// The fused path. With `accumulate`, grad_weight / grad_bias first hold a
/// known gradient (PRIOR), subtracted again before the result is returned.
lin_result run_fused(const lin_problem& p, cublasHandle_t h, size_t* ws_bytes = nullptr) {
  const lin_config& c = p.c;
  lin_call k(p, h);
  if (c.accumulate) preload_prior(p, k.o, PRIOR);
  // On the exact workspace a layout one piece short (the chunk is last) shows.
  step_fused(c, k.a, options_of(c), ws_bytes);
  return read_fused(p, k.o);
}

/// The unfused path: Z = H·Wᵀ + b for all rows in one GEMM (dtype T, the
/// bias as C with beta = 1), train_step with its gradient in place, then
/// grad_H = G·W and grad_W = Gᵀ·H (float) in one GEMM each, grad_b on the host.
lin_result run_unfused(const lin_problem& p, cublasHandle_t h) {
  const lin_config& c = p.c;
  lin_device d(p);
  const int64_t N = p.N;
  const unfused_linear lin{h, c.dtype, d.H, d.W, p.ldh, N, c.vocab, c.hidden};
  gc::train_args a;
  dmem Z = lin.logits(c.bias ? p.bb : std::vector<uint8_t>{}, a.tokens);
  set_sequences_and_pairs(a, a.tokens, p, d);
  const int64_t n_loss = lin_outputs::n_losses(p);
  dmem loss(static_cast<size_t>(n_loss) * 4), seq(static_cast<size_t>(p.S) * 4 + 4),
      gseq(static_cast<size_t>(p.S) * 4 + 4),
      lse(static_cast<size_t>(N) * 4), tlp(static_cast<size_t>(N) * 4);
  a.loss = static_cast<float*>(loss.get());
  a.seq_logps = static_cast<float*>(seq.get());
  a.grad_seq_logps = static_cast<float*>(gseq.get());
  a.lse = static_cast<float*>(lse.get());
  a.token_logps = static_cast<float*>(tlp.get());
  a.grad_logits = Z.get();  // in place
  const geopref::options opt = options_of(c);
  auto step = [&](void* w, size_t& n) {  // train_step<Loss> for the caller's loss
    return c.user_loss > 0 ? gc::train_step(w, n, a, opt, log_cosh_loss{c.user_loss})
                           : gc::train_step(w, n, a, opt);
  };
  run_two_phase(step);
  lin_result r;
  lin.backward(Z, c.bias, r.gh, r.gw, r.gb);
  r.losses = to_d(download<float>(loss.get(), static_cast<size_t>(n_loss)));
  r.loss = r.losses[0];
  r.seq_logps = to_d(download<float>(seq.get(), static_cast<size_t>(p.S)));
  r.grad_seq = to_d(download<float>(gseq.get(), static_cast<size_t>(p.S)));
  r.lse = to_d(download<float>(lse.get(), static_cast<size_t>(N)));
  r.token_logps = to_d(download<float>(tlp.get(), static_cast<size_t>(N)));
  return r;
}

linear_ref_result run_ref(const lin_problem& p) {
  linear_ref_problem in;
  in.hidden = p.H.data();
  in.weight = p.W.data();
  in.bias = p.c.bias ? p.b.data() : nullptr;
  in.n_rows = p.N;
  in.hidden_size = p.c.hidden;
  in.vocab = p.c.vocab;
  in.logit_transform = p.c.tr;
  in.labels = p.labels.data();
  in.offsets = p.offsets.data();
  in.n_seqs = p.S;
  in.n_pairs = p.c.pairs;
  in.pairs = p.c.explicit_pairs ? p.pairs.data() : nullptr;
  in.soft_labels = p.soft_d.data();
  in.ref_logps = p.no_ref ? nullptr : p.ref_d.data();
  in.token_weights = p.c.token_weights ? p.tw_d.data() : nullptr;
  in.weights = p.c.pair_weights ? p.weights_d.data() : nullptr;
  in.grad_pair_losses = p.c.grad_output ? p.gout_d.data() : nullptr;
  in.grad_loss = p.c.grad_loss;
  in.user_loss_beta = p.c.user_loss;
  linear_ref_result r;
  REQUIRE(geopref::support::run_linear_reference(in, options_of(p.c), r) == status::success);
  return r;
}

/// The error bounds of the model in the header comment, per element.
struct lin_bounds : linear_bounds {
  using linear_bounds::linear_bounds;
  std::vector<double> seq, grad_seq;
  double loss = 0;
  std::vector<double> losses;  // [P] under reduction::none
};

/// How far a pair's two coefficients ∂f/∂ρ_w, ∂f/∂ρ_l can move when ρ_w and
/// ρ_l move by e_w and e_l: err(∂f/∂ρ_w) ≤ ww·e_w + wl·e_l, err(∂f/∂ρ_l) ≤
/// lw·e_w + ll·e_l, the entries bounding |∂²f/∂ρ∂ρ| over the interval (the
/// mean value theorem per coefficient). A margin loss f(h), h = ρ_w − ρ_l,
/// has all four equal to K = sup |f''|; the geometric form multiplies f'' by
/// (2p̂ − 1)² ≤ 1, so K holds for it too. A combination adds |λ_k|·K_k.
/// Every K is global (valid for any h), so no interval needs computing.
struct curvature {
  double ww = 0, wl = 0, lw = 0, ll = 0;
  bool sorted = false;  // a sorted term: position k's weight and upstream act on another pair
  // aot_unpaired: position k pairs the k-th chosen with the k-th rejected,
  // so a sequence's partner is any sequence of the other side.
  bool unpaired = false;
  double max() const { return std::max(std::max(ww, wl), std::max(lw, ll)); }
  void add_margin(double lambda, double k) {
    ww += lambda * k, wl += lambda * k, lw += lambda * k, ll += lambda * k;
  }
};

curvature curvature_of(const lin_config& c) {
  const double b2 = c.beta * c.beta;
  curvature k;
  std::vector<std::pair<loss_type, double>> terms = c.terms;
  if (terms.empty()) {
    terms.push_back({c.loss, 1.0});
    if (c.with_sft) terms.push_back({loss_type::sft, 1.0});
  }
  for (const auto& [t, w] : terms) {
    const double lambda = std::fabs(w);
    if (c.user_loss > 0 && geopref::kind_of(t) == geopref::loss_kind::margin) {
      // log cosh(β'h − 1): f'' = β'² sech²(β'h − 1) ≤ β'².
      k.add_margin(lambda, c.user_loss * c.user_loss);
      continue;
    }
    switch (t) {
      // −log σ(βh) and its relatives: f'' = β² σ(z)σ(−z) ≤ β²/4 for dpo,
      // gdpo, cdpo (σ(z) − p̂ differentiates to the same), simpo (z − γ in
      // place of z), and robust, whose two σ terms add to
      // β² σσ̄ [(1−ε) − ε]/(1 − 2ε) = β² σσ̄.
      case loss_type::dpo:
      case loss_type::gdpo:
      case loss_type::cdpo:
      case loss_type::simpo:
      case loss_type::robust: k.add_margin(lambda, b2 / 4); break;
      // Quadratics: f'' = 2 exactly (ipo, gipo, cipo).
      case loss_type::ipo:
      case loss_type::gipo:
      case loss_type::cipo: k.add_margin(lambda, 2.0); break;
      // Piecewise linear: f'' = 0 off the kink βh = 1; the case checks that
      // no margin is within reach of it (hinge_clear below).
      case loss_type::hinge: break;
      // exo_pair, c = log ε − log(1−ε): f' = β σ'(z)(z + c), so
      // f'' = β² [σ''(z)(z + c) + σ'(z)] and |zσ''| ≤ 0.16, |σ''| ≤ 1/(6√3) <
      // 0.0963, σ' ≤ 1/4 give f'' ≤ β² (0.41 + 0.0963 |c|).
      case loss_type::exo_pair:
        k.add_margin(lambda, b2 * (0.41 + 0.0963 * std::fabs(std::log(c.epsilon) -
                                                             std::log1p(-c.epsilon))));
        break;
      // nca_pair: ∂/∂ρ_w = β[½σ(z_w) − σ(−z_w)] → β² (3/2) σσ̄ ≤ 3β²/8;
      // ∂/∂ρ_l = ½βσ(z_l) → ½β² σσ̄ ≤ β²/8; no cross terms.
      case loss_type::nca_pair:
        k.ww += lambda * 3 * b2 / 8;
        k.ll += lambda * b2 / 8;
        break;
      // bco_pair: −βσ(δ − z_w) and βσ(z_l − δ) each differentiate to β²σσ̄
      // ≤ β²/4 in their own variable; no cross terms.
      case loss_type::bco_pair:
        k.ww += lambda * b2 / 4;
        k.ll += lambda * b2 / 4;
        break;
      // sppo_hard: 2(ρ_w − c), 2(ρ_l + c): 2 on the diagonal.
      case loss_type::sppo_hard:
        k.ww += lambda * 2;
        k.ll += lambda * 2;
        break;
      // aot: cdpo of the sorted policy difference minus the sorted reference
      // one: with the ranks fixed (aot_ranks_stable below) position k's
      // coefficient moves as cdpo's, β²/4, by the errors of the one pair
      // that holds that position.
      case loss_type::aot:
        k.add_margin(lambda, b2 / 4);
        k.sorted = true;
        break;
      // aot_unpaired: cdpo of sort(ρ_w)_k − sort(ρ_l)_k: β²/4 as aot, with the
      // ranks of each side fixed (check_preconditions); the partner's error is
      // the largest on its side (curvature::unpaired).
      case loss_type::aot_unpaired:
        k.add_margin(lambda, b2 / 4);
        k.sorted = true;
        k.unpaired = true;
        break;
      // ropo: f = ασ(−z) + γ softplus(−z), f'' = β² [ασ''(−z) + γσ(z)σ(−z)];
      // |σ''| ≤ 1/(6√3) < 0.0963 gives β² (0.0963 α + γ/4) (gropo: ·(2p̂−1)² ≤ 1).
      case loss_type::ropo:
      case loss_type::gropo: k.add_margin(lambda, b2 * (0.0963 * c.alpha + c.gamma / 4)); break;
      // discopop, m = σ(z/τ), A = softplus(−z), B = e^{−z}: ∂²f/∂z² =
      // (1−m)A'' + mB'' + 2m'(B'−A') + m''(B−A), m'' ~ 1/τ². No closed sup:
      // scanned (step 2e−5 on [−8, 30]; f'' → 0 beyond) it is 13.20 at
      // τ = 0.05 (z ≈ 0.054); 14 β² is used, for that τ only.
      case loss_type::discopop:
        REQUIRE(c.tau == 0.05);
        k.add_margin(lambda, 14 * b2);
        break;
      // apo_zero: ∂/∂ρ_w = −βσ'(z_w), ∂/∂ρ_l = βσ'(z_l): β²|σ''| ≤ 0.0963β² on
      // the diagonal, no cross terms.
      case loss_type::apo_zero:
        k.ww += lambda * 0.0963 * b2;
        k.ll += lambda * 0.0963 * b2;
        break;
      // apo_down: ∂/∂ρ_w = β[σ'(z_w) − σ'(d)], ∂/∂ρ_l = βσ'(d), d = β(ρ_w − ρ_l):
      // ∂²/∂ρ_w² = β²[σ''(z_w) − σ''(d)] ≤ 2·0.0963β², every other entry ±β²σ''(d).
      case loss_type::apo_down:
        k.ww += lambda * 2 * 0.0963 * b2;
        k.wl += lambda * 0.0963 * b2;
        k.lw += lambda * 0.0963 * b2;
        k.ll += lambda * 0.0963 * b2;
        break;
      // orpo, g(x) = x − log(1 − eˣ), g' = 1/(1 − eˣ), g'' = eˣ/(1 − eˣ)²:
      // ∂²f/∂x_w² = β[σ(o)σ(−o) g'(x_w)² − σ(−o) g''(x_w)] (x_l alike, +g''),
      // cross −βσσ̄ g'(x_w)g'(x_l). Unbounded as x → 0: on x ≤ −1 (checked in
      // check_preconditions) g' ≤ 1.582, g'' ≤ 0.9207: β·1.547 and β·0.626.
      case loss_type::orpo:
        k.ww += lambda * c.beta * 1.547;
        k.ll += lambda * c.beta * 1.547;
        k.wl += lambda * c.beta * 0.626;
        k.lw += lambda * c.beta * 0.626;
        break;
      // sft: −(Σ w u / norm)/Σ n_a per chosen sequence, no log-prob in it.
      case loss_type::sft: break;
      default: FAIL("no curvature bound for " << geopref::loss_name(t)); break;
    }
  }
  return k;
}

/// extra_lse: added to every lse_t / ℓ_t bound (the vocab-parallel combine's
/// merges, see "vocab-parallel fused linear" below).
lin_bounds bounds_of(const lin_problem& p, const linear_ref_result& ref, double extra_lse = 0.0) {
  const lin_config& c = p.c;
  const double u = U32, uT = unit_roundoff(c.dtype);
  const int64_t N = p.N, V = c.vocab, Hd = c.hidden, S = p.S;
  // The logit transform (c.tr; the identity leaves every bound as it was):
  // the softmax sees z' = map(z), so an error e_z of the raw logit becomes
  // at most (s/T)·e_z in z' (|∂z'/∂z| ≤ s/T everywhere), plus the device's
  // own error in forming z' from the rounded z (gpu_harness.cuh's
  // transform_error_at: the constants' rounding, tanhf's or the MUFU's
  // tanh). Let e'_z(t) be the largest of those over the row; it replaces
  // e_z in lse and ℓ. G = c(𝟙 − p)·∂z'/∂z: the factor ∂z'/∂z is itself off
  // by transform_error_at's slope term plus its change over [z ± e_z]
  // (row_logit_errors::slope and ::slope_error in linear_harness.cuh).
  // lse_t and ℓ_t: linear_bounds's, + extra_lse.
  lin_bounds b(p, N, ref.logits, ref.base.lse, ref.base.token_logps, extra_lse);
  const row_logit_errors& errs = b.errs;
  const std::vector<double>& ezp = errs.ezp;
  std::vector<int64_t> row_seq(static_cast<size_t>(N), -1);
  for (int64_t s = 0; s < S; ++s) {
    double e = 0;
    for (int64_t t = p.offsets[s]; t < p.offsets[s + 1]; ++t) {
      row_seq[t] = s;
      if (p.labels[t] >= 0) e += (c.token_weights ? p.tw_d[t] : 1.0) * b.logp[t];
    }
    b.seq.push_back(e + 2 * u * std::fabs(ref.base.seq_logps[s]));
  }
  // g_s: pair i moves its sequences' coefficients by s_i · K · (err(L_a),
  // err(L_b)) (curvature_of), s_i = |w_i · upstream_i| / norm; a sorted
  // term's position k takes pair k's weight and upstream, so there the
  // largest s_j stands in.
  const geopref::options opt = options_of(c);
  const bool none = c.reduce == geopref::reduction::none;
  const double norm = geopref::reduction_divisor(opt, c.pairs);
  const curvature K = curvature_of(c);
  std::vector<double> up(static_cast<size_t>(c.pairs)), sc(static_cast<size_t>(c.pairs));
  double sc_max = 0;
  for (int64_t i = 0; i < c.pairs; ++i) {
    up[i] = std::fabs(c.grad_loss) * (none && c.grad_output ? std::fabs(p.gout_d[i]) : 1.0);
    sc[i] = (c.pair_weights ? std::fabs(p.weights_d[i]) : 1.0) * up[i] / norm;
    sc_max = std::max(sc_max, sc[i]);
  }
  std::vector<double> eg(static_cast<size_t>(S), 0.0);
  double ea_max = 0, eb_max = 0;  // the largest error on each side (aot_unpaired)
  for (int64_t i = 0; i < c.pairs; ++i) {
    ea_max = std::max(ea_max, b.seq[p.chosen(i)]);
    eb_max = std::max(eb_max, b.seq[p.rejected(i)]);
  }
  for (int64_t i = 0; i < c.pairs; ++i) {
    const int64_t a = p.chosen(i), bb = p.rejected(i);
    const double si = K.sorted ? sc_max : sc[i];
    eg[a] += si * (K.ww * b.seq[a] + K.wl * (K.unpaired ? eb_max : b.seq[bb]));
    eg[bb] += si * (K.lw * (K.unpaired ? ea_max : b.seq[a]) + K.ll * b.seq[bb]);
  }
  for (int64_t s = 0; s < S; ++s) b.grad_seq.push_back(eg[s] + 2 * u * std::fabs(ref.base.grad_seq_logps[s]));
  // The loss: to first order Σ_s |∂Loss/∂L_s| err(L_s) (g_s without the
  // upstream factor), doubled as before, plus the second-order remainder
  // ½ K e_h² per pair, e_h = err(L_a) + err(L_b) (Taylor with f'' ≤ K):
  // needed where f' itself is near 0 (ipo, cdpo, exo_pair, log cosh at their
  // minima), where the first-order term vanishes.
  if (!none) {
    const double up0 = std::fabs(c.grad_loss);
    REQUIRE(up0 > 0);
    b.loss = 2 * u * std::fabs(ref.base.loss);
    for (int64_t s = 0; s < S; ++s)
      b.loss += 2 * std::fabs(ref.base.grad_seq_logps[s]) / up0 * b.seq[s];
    for (int64_t i = 0; i < c.pairs; ++i) {
      const double eh = K.unpaired ? ea_max + eb_max : b.seq[p.chosen(i)] + b.seq[p.rejected(i)];
      b.loss += (K.sorted ? sc_max : sc[i]) / up0 * 0.5 * K.max() * eh * eh;
    }
  } else {
    // Per pair (default layout: pair i alone holds sequences i and P + i,
    // so g_{a_i}, g_{b_i} are pair i's coefficients times up_i).
    REQUIRE(!c.explicit_pairs);
    REQUIRE(!K.sorted);
    for (int64_t i = 0; i < c.pairs; ++i) {
      const int64_t a = p.chosen(i), bb = p.rejected(i);
      REQUIRE(up[i] > 0);
      const double eh = b.seq[a] + b.seq[bb];
      b.losses.push_back(2 * u * std::fabs(ref.base.pair_losses[i]) +
                         2 * (std::fabs(ref.base.grad_seq_logps[a]) * b.seq[a] +
                              std::fabs(ref.base.grad_seq_logps[bb]) * b.seq[bb]) / up[i] +
                         sc[i] * norm / up[i] * 0.5 * K.max() * eh * eh);
    }
  }
  // G and the three products.
  std::vector<double> eG(static_cast<size_t>(N * V), 0.0);
  for (int64_t t = 0; t < N; ++t) {
    const int64_t s = row_seq[t];
    if (s < 0 || p.labels[t] < 0) continue;
    const double w = c.token_weights ? p.tw_d[t] : 1.0;
    const double cg = std::fabs(ref.base.grad_seq_logps[s]) * w, ec = b.grad_seq[s] * w;
    for (int64_t v = 0; v < V; ++v) {
      const double z = ref.logits[t * V + v];
      const double pr = std::exp(geopref::apply(c.tr, z) - ref.base.lse[t]);
      const double one_minus = std::fabs((v == p.labels[t] ? 1.0 : 0.0) - pr);
      const double G = std::fabs(ref.base.grad_logits[t * V + v]);
      eG[t * V + v] = cg * pr * (ezp[t] + b.lse[t]) * 1.01 + ec * one_minus + (uT + 3 * u) * G;
      if (!geopref::is_identity(c.tr)) {
        eG[t * V + v] = (eG[t * V + v] - (uT + 3 * u) * G) * errs.slope(t, z) +
                        cg * one_minus * errs.slope_error(t, z) + (uT + 3 * u) * G;
      }
    }
  }
  const int64_t chunks = (N + c.chunk_rows - 1) / c.chunk_rows;
  b.products(eG, ref.base.grad_logits, ref.grad_hidden, p.H, p.W, N, V, Hd, chunks, uT,
             c.gw_float32);
  return b;
}

void compare(const lin_problem& p, const lin_result& g, const linear_ref_result& ref,
             const lin_bounds& b, double factor) {
  std::vector<double> lse = ref.base.lse, logp = ref.base.token_logps;
  check_all("lse", g.lse, lse, b.lse, factor);
  check_all("token_logps", g.token_logps, logp, b.logp, factor);
  check_all("seq_logps", g.seq_logps, ref.base.seq_logps, b.seq, factor);
  check_all("grad_seq_logps", g.grad_seq, ref.base.grad_seq_logps, b.grad_seq, factor);
  if (p.c.reduce == geopref::reduction::none) {
    check_all("pair losses", g.losses, ref.base.pair_losses, b.losses, factor);
  } else {
    INFO("loss: got " << g.loss << " want " << ref.base.loss << " bound " << factor * b.loss);
    CHECK(std::fabs(g.loss - ref.base.loss) <= factor * b.loss);
  }
  b.check_grads(g, ref.grad_hidden, ref.grad_weight, ref.grad_bias, p.c.bias, factor);
}

/// `ref` with another run's values in place of the exact ones, for
/// comparing two runs (each within the bound of the exact value).
linear_ref_result values_of(linear_ref_result ref, const lin_result& u) {
  // (pair_losses: read under reduction::none only.)
  std::tie(ref.base.lse, ref.base.token_logps, ref.base.seq_logps, ref.base.grad_seq_logps,
           ref.base.loss, ref.base.pair_losses) =
      std::tie(u.lse, u.token_logps, u.seq_logps, u.grad_seq, u.loss, u.losses);
  std::tie(ref.grad_hidden, ref.grad_weight, ref.grad_bias) = std::tie(u.gh, u.gw, u.gb);
  return ref;
}

bool has_term(const lin_config& c, loss_type t) {
  if (c.terms.empty()) return c.loss == t;
  for (const auto& x : c.terms)
    if (x.first == t) return true;
  return false;
}

/// The indices of `v` sorted by value (ties in index order).
std::vector<size_t> rank_order(const std::vector<double>& v) {
  std::vector<size_t> o(v.size());
  for (size_t i = 0; i < o.size(); ++i) o[i] = i;
  std::stable_sort(o.begin(), o.end(), [&](size_t x, size_t y) { return v[x] < v[y]; });
  return o;
}

/// The preconditions of the error model's non-smooth and sorted terms, on
/// the exact margins: within the bound (twice: the unfused path too) of the
/// exact values no margin reaches hinge's kink βh = 1, and no two of aot's
/// policy differences x_a − x_b trade ranks. A case that fails here needs
/// another seed, not a wider tolerance.
void check_preconditions(const lin_problem& p, const linear_ref_result& ref, const lin_bounds& b) {
  const lin_config& c = p.c;
  auto eh = [&](int64_t i) { return b.seq[p.chosen(i)] + b.seq[p.rejected(i)]; };
  if (has_term(c, loss_type::hinge) && c.user_loss <= 0) {
    int below = 0;
    for (int64_t i = 0; i < c.pairs; ++i) {
      const double z = c.beta * ref.base.margins[i];
      INFO("pair " << i << ": βh = " << z << ", reach " << 2 * c.beta * eh(i));
      REQUIRE(std::fabs(z - 1.0) > 2 * c.beta * eh(i));
      below += z < 1.0;
    }
    // Both branches of the subgradient (−β and 0) are exercised.
    REQUIRE(below > 0);
    REQUIRE(below < c.pairs);
  }
  if (has_term(c, loss_type::aot)) {
    REQUIRE(!p.no_ref);
    std::vector<double> d(static_cast<size_t>(c.pairs)), r(d.size());
    for (int64_t i = 0; i < c.pairs; ++i) {
      r[i] = p.ref_d[p.chosen(i)] - p.ref_d[p.rejected(i)];
      d[i] = ref.base.margins[i] + r[i];  // the policy's x_a − x_b
    }
    for (int64_t i = 0; i < c.pairs; ++i)
      for (int64_t j = i + 1; j < c.pairs; ++j) {
        INFO("pairs " << i << ", " << j << ": x_a − x_b = " << d[i] << ", " << d[j]);
        REQUIRE(std::fabs(d[i] - d[j]) > 2 * (eh(i) + eh(j)));
      }
    // The sort matters: the two orders differ, so aot is not cdpo pair by pair.
    REQUIRE(rank_order(d) != rank_order(r));
  }
  if (has_term(c, loss_type::aot_unpaired)) {
    // Each side's log-ratios keep their ranks, and the two sides' orders
    // differ (else it is cdpo pair by pair).
    REQUIRE(!p.no_ref);
    std::vector<double> rw(static_cast<size_t>(c.pairs)), rl(rw.size());
    for (int64_t i = 0; i < c.pairs; ++i) {
      rw[i] = ref.base.seq_logps[p.chosen(i)] - p.ref_d[p.chosen(i)];
      rl[i] = ref.base.seq_logps[p.rejected(i)] - p.ref_d[p.rejected(i)];
    }
    for (int64_t i = 0; i < c.pairs; ++i)
      for (int64_t j = i + 1; j < c.pairs; ++j) {
        INFO("pairs " << i << ", " << j << ": ρ_w " << rw[i] << ", " << rw[j] << "; ρ_l " << rl[i]
                      << ", " << rl[j]);
        REQUIRE(std::fabs(rw[i] - rw[j]) > 2 * (b.seq[p.chosen(i)] + b.seq[p.chosen(j)]));
        REQUIRE(std::fabs(rl[i] - rl[j]) > 2 * (b.seq[p.rejected(i)] + b.seq[p.rejected(j)]));
      }
    REQUIRE(rank_order(rw) != rank_order(rl));
  }
  if (has_term(c, loss_type::orpo)) {
    // curvature_of's orpo bound holds on x̄ ≤ −1: every averaged log-prob of
    // a pair, moved by twice its error, stays there (and is not empty).
    for (int64_t i = 0; i < c.pairs; ++i)
      for (int64_t s : {p.chosen(i), p.rejected(i)}) {
        int64_t n = 0;
        for (int64_t t = p.offsets[s]; t < p.offsets[s + 1]; ++t) n += p.labels[t] >= 0;
        REQUIRE(n > 0);
        // (orpo's seq_logps are already the averages x̄_s.)
        INFO("sequence " << s << ": x̄ = " << ref.base.seq_logps[s]);
        REQUIRE(ref.base.seq_logps[s] + 2 * b.seq[s] <= -1.0);
      }
  }
}

void check_lin_case(const lin_config& c) {
  INFO(describe(c));
  const lin_problem p = make_lin(c);
  blas_handle h;
  const lin_result g = run_fused(p, h.h);
  const linear_ref_result ref = run_ref(p);
  const lin_bounds b = bounds_of(p, ref);
  check_preconditions(p, ref, b);
  {
    INFO("fused vs the CPU reference");
    compare(p, g, ref, b, 1.0);
  }
  {
    INFO("fused vs the unfused path (each within the bound of the exact value)");
    // The unfused path's grad_W is one float GEMM: within the same bound.
    compare(p, g, values_of(ref, run_unfused(p, h.h)), b, 2.0);
  }
  {
    INFO("bitwise repeatable");
    const lin_result g2 = run_fused(p, h.h);
    g2.check_same_bits(g);
    CHECK(g2.losses == g.losses);
  }
}

/// A test case's variants: each a SECTION named `name`, whose config is the
/// test case's with `set` applied; `bounds` the vocab-parallel slices.
struct lin_case {
  const char* name;
  void (*set)(lin_config&);
  std::vector<int64_t> bounds{};
};

/// Each case one SECTION of the calling test case, its config the default
/// one in `dtype` with `seed`, then the case's set: checked by
/// check_lin_case, or with its bounds by check_sharded_case (`sharded`).
void lin_sections(gc::dtype dtype, uint64_t seed, const std::vector<lin_case>& cases,
                  bool sharded = false);

/// Two variants both the unsharded and the vocab-parallel cases take:
/// grad_weight accumulated in bfloat16, no bias, padded rows; accumulate
/// into a float grad_weight with token weights and explicit pairs.
void bf16_accumulate_strided(lin_config& x) {
  x.accumulate = true;
  x.gw_float32 = false;
  x.bias = false;
  x.pad = 3;
}
void accumulate_weighted_pairs(lin_config& x) {
  x.accumulate = true;
  x.token_weights = true;
  x.explicit_pairs = true;
}

}  // namespace

TEST_CASE("fused linear equals the reference and the unfused path: awkward shapes",
          "[fused_linear][small]") {
  for_each_dtype<lin_config>(3, [](const lin_config& c) {
    check_lin_case(c);  // V = 37, chunks of 4 rows: pairs cross chunk boundaries
    lin_config one = c;
    one.chunk_rows = 1;  // a budget of one row
    one.hidden = 1;      // H = 1
    one.seed = 4;
    check_lin_case(one);
  });
}

TEST_CASE("fused linear: options and layouts", "[fused_linear]") {
  lin_sections(gc::dtype::bfloat16, 10, {
      {"accumulate into bfloat16 grad_weight, no bias, strides", bf16_accumulate_strided},
      {"accumulate into float, token weights, explicit pairs, one chunk", [](lin_config& x) {
         accumulate_weighted_pairs(x);
         x.chunk_rows = 1000;
         x.dtype = gc::dtype::float32;
       }},
      {"dpo + sft (batch-coupled: the chosen-token mean), pairs across chunks",
       [](lin_config& x) { x.loss = loss_type::dpo; x.with_sft = true; x.chunk_rows = 3; }},
      {"gdpo on length-averaged log-probs (average_logps), bf16",
       [](lin_config& x) { x.average_logps = true; x.dtype = gc::dtype::bfloat16; x.max_len = 6; }},
      {"dpo, V a multiple of 8 plus 1, chunk of 3 rows, longer sequences", [](lin_config& x) {
         x.loss = loss_type::dpo;
         x.vocab = 65;
         x.chunk_rows = 3;
         x.max_len = 7;
         x.hidden = 5;
       }}});
}

// The rest of the loss family through the fused path. Each case's g_s bound
// comes from its own loss's curvature (curvature_of); hinge, aot and
// aot_unpaired also check that their margins keep clear of the kink and of
// rank swaps, orpo that its averaged log-probs stay where its bound holds
// (check_preconditions). Every case is one problem of ~20 rows: the whole
// test case takes about a second on the emulator. Mostly float32: the
// pair step is the same code for every dtype, and float's bounds are tight
// enough to see a 1% change of β; a few cases keep the 16-bit types.
TEST_CASE("fused linear: the loss family", "[fused_linear]") {
  using lt = loss_type;
  constexpr gc::dtype f16 = gc::dtype::float16, bf16 = gc::dtype::bfloat16;
  lin_sections(gc::dtype::float32, 40, {
      {"ipo on length-normalised log-probs (TRL's form), pairs across chunks",
       [](lin_config& x) { x.loss = lt::ipo; x.average_logps = true; x.chunk_rows = 3; }},
      {"simpo: reference-free, forced averaging, target margin γ, float16",
       [](lin_config& x) { x.loss = lt::simpo; x.gamma = 0.4; x.dtype = f16; }},
      {"cdpo with soft labels as targets, token weights, bfloat16",
       [](lin_config& x) { x.loss = lt::cdpo; x.dtype = bf16; x.token_weights = true; }},
      {"robust (ε = 0.2)", [](lin_config& x) { x.loss = lt::robust; x.epsilon = 0.2; }},
      {"exo_pair (ε = 0.1), per-pair weights",
       [](lin_config& x) { x.loss = lt::exo_pair; x.epsilon = 0.1; x.pair_weights = true; }},
      // pairs = 6: βh ≈ −8.3 … 4.8, one at 0.35 (a kink misplaced at 0 shows).
      {"hinge, every margin clear of the kink, both branches, bfloat16",
       [](lin_config& x) { x.loss = lt::hinge; x.dtype = bf16; x.pairs = 6; x.seed = 44; }},
      {"nca_pair (two-sided), explicit pairs sharing sequences",
       [](lin_config& x) { x.loss = lt::nca_pair; x.explicit_pairs = true; }},
      {"bco_pair (two-sided, δ = 0.3), float16",
       [](lin_config& x) { x.loss = lt::bco_pair; x.bco_delta = 0.3; x.dtype = f16; }},
      {"sppo_hard (two-sided, quadratic), bfloat16",
       [](lin_config& x) { x.loss = lt::sppo_hard; x.dtype = bf16; }},
      {"aot: batch-coupled through the sort, ranks that differ from the reference's",
       [](lin_config& x) { x.loss = lt::aot; x.pairs = 6; x.seed = 42; }},
      {"a weighted combination: cdpo + ipo + bco_pair + sft, weights, chunk of 2",
       [](lin_config& x) {
         x.terms = {{lt::cdpo, 0.7}, {lt::ipo, 0.2}, {lt::bco_pair, 0.5}, {lt::sft, 0.4}};
         x.bco_delta = -0.2;
         x.pair_weights = true;
         x.chunk_rows = 2;
       }},
      {"reduction::none with grad_output and grad_loss, gdpo, weights", [](lin_config& x) {
         x.loss = lt::gdpo;
         x.reduce = geopref::reduction::none;
         x.grad_output = true;
         x.pair_weights = true;
         x.grad_loss = 0.5;
       }},
      {"cipo (quadratic, soft targets)", [](lin_config& x) { x.loss = lt::cipo; }},
      {"ropo (α = 1.3, γ = 0.4)",
       [](lin_config& x) { x.loss = lt::ropo; x.alpha = 1.3; x.gamma = 0.4; }},
      {"gropo: ropo's geometric form with the soft labels, pairs across chunks",
       [](lin_config& x) { x.loss = lt::gropo; x.alpha = 0.8; x.gamma = 0.6; x.chunk_rows = 3; }},
      {"discopop (τ = 0.05, TRL's default)", [](lin_config& x) { x.loss = lt::discopop; }},
      {"apo_zero (two-sided), bfloat16: its small curvature still shows a 1% change of β",
       [](lin_config& x) { x.loss = lt::apo_zero; x.dtype = bf16; }},
      {"apo_down (two-sided, cross terms), explicit pairs sharing sequences",
       [](lin_config& x) { x.loss = lt::apo_down; x.explicit_pairs = true; }},
      // seed 49: no empty sequence (x̄ of none would be 0).
      {"orpo: odds ratio of the averaged log-probs, reference-free, every x̄ ≤ −1",
       [](lin_config& x) { x.loss = lt::orpo; x.seed = 49; }},
      {"aot_unpaired: each side sorted on its own, orders that differ",
       [](lin_config& x) { x.loss = lt::aot_unpaired; x.pairs = 6; x.seed = 42; }},
      {"sum reduction, grad_loss 2, two-sided in a combination with dpo", [](lin_config& x) {
         x.terms = {{lt::dpo, 1.0}, {lt::nca_pair, 0.5}};
         x.reduce = geopref::reduction::sum;
         x.grad_loss = 2.0;
       }}});
}

// A caller's margin loss through fused_linear_step<Loss>: against the
// reference's fused_linear_with_loss (the same functor in double) and
// against train_step<Loss> on the materialised logits (the unfused path).
TEST_CASE("fused linear: a caller's loss through the Loss overload", "[fused_linear][small]") {
  lin_sections(gc::dtype::bfloat16, 50,
               {{"alone", [](lin_config& x) { x.user_loss = 0.7; }},
                {"in a combination: it replaces the margin terms, sft stays", [](lin_config& x) {
                   x.user_loss = 0.7;
                   x.terms = {{loss_type::dpo, 1.0}, {loss_type::sft, 0.5}};
                   x.chunk_rows = 3;
                   x.dtype = gc::dtype::float32;
                 }}});
}

namespace {

/// fused_linear_logps (the forward alone) gives the step's seq_logps bits;
/// with `counts`, it also writes lse and each sequence's count of scored
/// tokens, checked against the labels.
void check_logps_as_step(const lin_config& c, bool counts) {
  const lin_problem p = make_lin(c);
  blas_handle h;
  lin_device d(p);
  gc::linear_logps_args a;
  a.in = train_args_of(p, d).in;
  a.in.cublas = h.h;
  dmem seq(static_cast<size_t>(p.S) * 4), n_scored, lse;
  poison(seq);
  a.seq_logps = static_cast<float*>(seq.get());
  if (counts) {
    n_scored = dmem(static_cast<size_t>(p.S) * 8);
    lse = dmem(static_cast<size_t>(p.N) * 4);
    a.seq_counts = static_cast<int64_t*>(n_scored.get());
    a.lse = static_cast<float*>(lse.get());
  }
  const geopref::options opt = options_of(c);
  dmem ws = GEOPREF_RUN(gc::fused_linear_logps, a, opt);
  const auto got = download<float>(seq.get(), static_cast<size_t>(p.S));
  const lin_result full = run_fused(p, h.h);
  for (int64_t s = 0; s < p.S; ++s) CHECK(got[s] == static_cast<float>(full.seq_logps[s]));
  if (!counts) return;
  const auto n = download<int64_t>(n_scored.get(), static_cast<size_t>(p.S));
  for (int64_t s = 0; s < p.S; ++s) {
    int64_t e = 0;
    for (int64_t t = p.offsets[s]; t < p.offsets[s + 1]; ++t) e += p.labels[t] >= 0;
    CHECK(n[s] == e);
  }
}

}  // namespace

TEST_CASE("fused linear logps: the forward alone gives train_step's log-probs",
          "[fused_linear][small]") {
  lin_config c;
  c.dtype = gc::dtype::float16;
  c.seed = 21;
  check_logps_as_step(c, true);
}

TEST_CASE("fused linear: bad inputs are a status", "[fused_linear][small]") {
  lin_config c;
  const lin_problem p = make_lin(c);
  blas_handle h;
  const lin_call call(p, h.h);
  const gc::linear_train_args& a = call.a;
  const geopref::options opt;
  size_t bytes = 0;
  REQUIRE(gc::fused_linear_step(nullptr, bytes, a, opt) == status::success);
  dmem ws(bytes);

  auto bad = a;
  bad.in.chunk_bytes = 4 * 40 - 1;  // less than one row (ldc 40 floats)
  size_t q = 0;
  CHECK(gc::fused_linear_step(nullptr, q, bad, opt) == status::workspace_too_small);
  size_t small = bytes - 1;
  CHECK(gc::fused_linear_step(ws.get(), small, a, opt) == status::workspace_too_small);
  bad = a;
  bad.in.ld_hidden = c.hidden - 1;
  CHECK(gc::fused_linear_step(nullptr, q, bad, opt) == status::invalid_stride);
  bad = a;
  bad.in.hidden_size = 0;
  CHECK(gc::fused_linear_step(nullptr, q, bad, opt) == status::invalid_shape);
  bad = a;
  bad.in.bias = nullptr;  // grad_bias without a bias
  CHECK(gc::fused_linear_step(nullptr, q, bad, opt) == status::null_pointer);
  bad = a;
  bad.in.weight = nullptr;
  CHECK(gc::fused_linear_step(ws.get(), bytes, bad, opt) == status::null_pointer);
  bad = a;
  bad.grad_hidden = const_cast<void*>(a.in.hidden);  // written while read
  CHECK(gc::fused_linear_step(ws.get(), bytes, bad, opt) == status::overlapping_buffers);
  bad = a;
  bad.grad_weight = static_cast<char*>(ws.get()) + 512;
  bad.grad_weight_float32 = true;
  CHECK(gc::fused_linear_step(ws.get(), bytes, bad, opt) == status::overlapping_buffers);
  bad = a;
  bad.in.type = static_cast<gc::dtype>(7);
  CHECK(gc::fused_linear_step(nullptr, q, bad, opt) == status::unsupported_dtype);

  // A label out of range: recorded on the device, nothing read out of bounds.
  std::vector<int64_t> labels = p.labels;
  labels[1] = c.vocab;
  dmem dl = upload(labels);
  bad = a;
  bad.in.labels = dl.get();
  REQUIRE(gc::fused_linear_step(ws.get(), bytes, bad, opt) == status::success);
  status dev = status::success;
  REQUIRE(gc::device_status(ws.get(), nullptr, &dev) == status::success);
  CHECK(dev == status::label_out_of_range);
}

TEST_CASE("fused linear: the workspace is the chunk plus O(N), never O(N·V); nothing else "
          "is allocated",
          "[fused_linear][small]") {
  // Real sizes for the query (no buffers needed): N = 16384, V = 128256, bf16.
  gc::linear_train_args a;
  a.in.type = gc::dtype::bfloat16;
  a.in.n_rows = 16384;
  a.in.hidden_size = 4096;
  a.in.vocab = 128256;
  a.in.n_seqs = 64;
  a.n_pairs = 32;
  const size_t row = 128256 * 2;
  a.in.chunk_bytes = 1024 * row;  // 1024 rows: 263 MB
  size_t bytes = 0;
  REQUIRE(gc::fused_linear_step(nullptr, bytes, a, geopref::options{}) == status::success);
  const double nv = 16384.0 * 128256.0 * 2.0;  // the bf16 logits: 4.2 GB
  INFO("workspace " << bytes << " bytes; chunk " << a.in.chunk_bytes << "; N·V·2 " << nv);
  CHECK(bytes >= a.in.chunk_bytes);
  CHECK(bytes <= a.in.chunk_bytes + 64 * 16384 + 64 * 1024 + 8192);  // + O(N + S + P)
  CHECK(static_cast<double>(bytes) < nv / 15);

  // Measured: device memory does not move during a call with the caller's
  // handle (the library allocates nothing; the workspace is all it uses).
  lin_config c;
  c.pairs = 8;
  const lin_problem p = make_lin(c);
  blas_handle h;
  const lin_call call(p, h.h);
  const gc::linear_train_args& b = call.a;
  size_t need = 0;
  REQUIRE(gc::fused_linear_step(nullptr, need, b, geopref::options{}) == status::success);
  dmem ws(need);
  REQUIRE(gc::fused_linear_step(ws.get(), need, b, geopref::options{}) == status::success);
  CUDA_REQUIRE(cudaDeviceSynchronize());  // the handle's own workspace now exists
#if !defined(GEOPREF_HOST_EMULATION)
  // (The emulator's cudaMemGetInfo is the host's free memory, which other
  // processes move: measured on a GPU only.)
  size_t free0 = 0, total = 0, free1 = 0;
  CUDA_REQUIRE(cudaMemGetInfo(&free0, &total));
  REQUIRE(gc::fused_linear_step(ws.get(), need, b, geopref::options{}) == status::success);
  CUDA_REQUIRE(cudaDeviceSynchronize());
  CUDA_REQUIRE(cudaMemGetInfo(&free1, &total));
  CHECK(free1 == free0);
#endif
  const double chunk = static_cast<double>(b.in.chunk_bytes);
  INFO("small case: workspace " << need << " bytes, chunk " << chunk << ", N·V·4 "
                                << static_cast<double>(p.N * c.vocab * 4));
  CHECK(static_cast<double>(need) <= chunk + 64.0 * static_cast<double>(p.N) + 16 * 256.0);
}

TEST_CASE("fused linear: no rows still overwrites grad_weight and grad_bias with zeros",
          "[fused_linear][small]") {
  blas_handle h;
  // grad_weight with a row stride of 4 > H = 3: the zeros fill each row's 3
  // columns and leave the padding column as it was.
  dmem W(static_cast<size_t>(5 * 3 * 4)), b(5 * 4), gw(5 * 4 * 4), gb(5 * 4);
  poison(W);
  poison(b);
  poison(gw);
  poison(gb);
  gc::linear_train_args a;
  a.in.weight = W.get();
  a.in.bias = b.get();
  a.in.type = gc::dtype::float32;
  a.in.hidden_size = 3;
  a.in.vocab = 5;
  a.in.cublas = h.h;
  a.grad_weight = gw.get();
  a.ld_grad_weight = 4;
  a.grad_bias = static_cast<float*>(gb.get());
  dmem ws = GEOPREF_RUN(gc::fused_linear_step, a, geopref::options{});
  const std::vector<float> g = download<float>(gw.get(), 20);
  for (size_t i = 0; i < g.size(); ++i) {
    if (i % 4 < 3) CHECK(g[i] == 0.0f);
    else CHECK(std::isnan(g[i]));  // the padding keeps its poison
  }
  for (float x : download<float>(gb.get(), 5)) CHECK(x == 0.0f);
}

// ---------------------------------------------------------------------------
// The vocab-parallel fused linear (geopref/cuda/vocab_linear.cuh): K
// simulated ranks, each with its rows [bounds[r], bounds[r+1]) of W and b,
// in one process. grad_W and grad_b are the concatenation of the ranks'
// slices, grad_H the sum of their partials (in double, rank order: the
// all-reduce the caller would run).
//
// Error model: the header's, with two additions.
//   * lse_t: the slice's forward merges its splits as the unsharded chunk's
//     combine does (inside eps_sum's bound); the records of K slices are then
//     merged once more each: a rescale and an add, each rounding s by ≤ u,
//     so ≤ 2Ku relative on the final sum, 2Ku absolute on lse_t and ℓ_t.
//   * grad_H: each rank's partial G_r·W_r is rounded to the dtype on its own,
//     so the rounding term is u_T · Σ_r |partial_r| (≥ u_T |grad_H| when the
//     partials cancel). The GEMM term over V_r ⊂ V columns is inside the
//     unsharded one.
// Everything else (G, grad_W, grad_b per column) is the unsharded bound
// column by column: the slice's columns see the same logits, the same chunk
// rows (the budget below is set per slice to the same C) and the same g_s.
namespace {

struct sharded_result {
  lin_result r;                  // grad_H summed, grad_W / grad_b concatenated
  std::vector<double> gh_abs;    // Σ_r |partial_r|, [N, Hd]
  std::vector<uint8_t> all_bits; // every rank's every output, for bitwise checks
};

/// Runs K ranks; rank r's records land in slot slot[r].
sharded_result run_sharded(const lin_problem& p, cublasHandle_t h, const std::vector<int64_t>& bounds,
                           const std::vector<int>& slot) {
  const lin_config& c = p.c;
  const int K = static_cast<int>(bounds.size()) - 1;
  const int e = dtype_bytes(c.dtype);
  lin_device d(p);
  const geopref::options opt = options_of(c);
  dmem gathered(static_cast<size_t>(K * p.N) * sizeof(gc::vocab_record));
  poison(gathered);
  auto slice_in = [&](int r, gc::scored_linear& in, lin_problem& q) {
    const int64_t w = bounds[r + 1] - bounds[r];
    q = p;
    q.c.vocab = w;
    in.weight = static_cast<const uint8_t*>(d.W.get()) + bounds[r] * p.ldh * e;
    in.bias = c.bias ? static_cast<const uint8_t*>(d.b.get()) + bounds[r] * e : nullptr;
    in.vocab = w;
    in.cublas = h;
    const int64_t per16 = 16 / e;
    in.chunk_bytes = static_cast<size_t>(c.chunk_rows * ((w + per16 - 1) / per16 * per16) * e);
  };
  auto run_with_guard = [&](auto&& call) {
    size_t bytes = 0;
    REQUIRE(call(nullptr, bytes) == status::success);
    dmem mem(bytes + 1);  // exactly the bytes asked for, the base one past alignment
    poison(mem);
    void* ws = static_cast<uint8_t*>(mem.get()) + 1;
    REQUIRE(call(ws, bytes) == status::success);
    status dev = status::internal_error;
    REQUIRE(gc::device_status(ws, nullptr, &dev) == status::success);
    REQUIRE(dev == status::success);
  };
  auto* rec = static_cast<gc::vocab_record*>(gathered.get());
  for (int r = 0; r < K; ++r) {
    gc::vocab_linear_stats_args sa;
    lin_problem q;
    sa.in = train_args_of(p, d).in;
    slice_in(r, sa.in, q);
    sa.slice = {bounds[r], c.vocab, r, K};
    sa.records = rec + static_cast<int64_t>(slot[r]) * p.N;
    run_with_guard([&](void* ws, size_t& b) { return gc::vocab_linear_stats(ws, b, sa, opt); });
  }
  sharded_result out;
  lin_result& R = out.r;
  const float prior = 0.25f;
  for (int r = 0; r < K; ++r) {
    gc::vocab_linear_train_args ta;
    lin_problem q;
    ta.train = train_args_of(p, d);
    slice_in(r, ta.train.in, q);
    lin_outputs o(q);
    o.attach(ta.train, q);
    if (c.accumulate) preload_prior(q, o, prior);
    ta.slice = {bounds[r], c.vocab, r, K};
    ta.records = rec;
    run_with_guard([&](void* ws, size_t& b) {
      return c.user_loss > 0 ? gc::vocab_linear_step(ws, b, ta, opt, log_cosh_loss{c.user_loss})
                             : gc::vocab_linear_step(ws, b, ta, opt);
    });
    lin_result x = o.read(q);
    if (r == 0) {  // rank 0's combined outputs; the gradients are gathered below
      R = x;
      static_cast<linear_grads&>(R) = linear_grads{};
      R.gh.assign(static_cast<size_t>(p.N * c.hidden), 0.0);
      out.gh_abs = R.gh;
    } else {  // the combined outputs: bitwise the same on every rank
      CHECK(x.losses == R.losses);
      CHECK(x.seq_logps == R.seq_logps);
      CHECK(x.lse == R.lse);
      CHECK(x.token_logps == R.token_logps);
      CHECK(x.grad_seq == R.grad_seq);
    }
    for (size_t i = 0; i < R.gh.size(); ++i) {
      R.gh[i] += x.gh[i];
      out.gh_abs[i] += std::fabs(x.gh[i]);
    }
    for (double& v : x.gw) v -= c.accumulate ? prior : 0.0f;
    for (double& v : x.gb) v -= c.accumulate ? prior : 0.0f;
    R.gw.insert(R.gw.end(), x.gw.begin(), x.gw.end());
    R.gb.insert(R.gb.end(), x.gb.begin(), x.gb.end());
    for (const auto* bits : {&x.gh_bits, &x.gw_bits, &x.gb_bits})
      out.all_bits.insert(out.all_bits.end(), bits->begin(), bits->end());
  }
  for (double l : R.losses) {
    const float loss = static_cast<float>(l);
    const auto* lb = reinterpret_cast<const uint8_t*>(&loss);
    out.all_bits.insert(out.all_bits.end(), lb, lb + 4);
  }
  return out;
}

/// rerun: also a second run in slot order (the reversed run already has to
/// give the first run's bits, so the fast set skips it).
void check_sharded_case(const lin_config& c, const std::vector<int64_t>& bounds, bool rerun = false) {
  INFO(describe(c) << " K=" << bounds.size() - 1);
  lin_problem p = make_lin(c);
  // A scored label in the last column of the last slice.
  for (int64_t s = 0; s < p.S; ++s)
    if (p.offsets[s + 1] > p.offsets[s]) {
      p.labels[p.offsets[s]] = c.vocab - 1;
      break;
    }
  const int K = static_cast<int>(bounds.size()) - 1;
  std::vector<int> in_order(K), reversed(K);
  for (int r = 0; r < K; ++r) in_order[r] = r, reversed[r] = K - 1 - r;
  blas_handle h;
  const sharded_result g = run_sharded(p, h.h, bounds, in_order);
  const linear_ref_result ref = run_ref(p);
  lin_bounds b = bounds_of(p, ref, 2.0 * K * U32);
  check_preconditions(p, ref, b);
  for (size_t i = 0; i < b.gh.size(); ++i) b.gh[i] += unit_roundoff(c.dtype) * g.gh_abs[i];
  {
    INFO("K ranks vs the CPU reference");
    compare(p, g.r, ref, b, 1.0);
  }
  {
    INFO("K ranks vs the unsharded fused path (each within the bound of the exact value)");
    compare(p, g.r, values_of(ref, run_fused(p, h.h)), b, 2.0);
  }
  {
    INFO("bitwise: run again, and with the records gathered in reverse slot order");
    if (rerun) CHECK(run_sharded(p, h.h, bounds, in_order).all_bits == g.all_bits);
    CHECK(run_sharded(p, h.h, bounds, reversed).all_bits == g.all_bits);
  }
}

void lin_sections(gc::dtype dtype, uint64_t seed, const std::vector<lin_case>& cases,
                  bool sharded) {
  for (const lin_case& k : cases)
    SECTION(k.name) {
      lin_config c;
      c.dtype = dtype;
      c.seed = seed;
      k.set(c);
      if (sharded) check_sharded_case(c, k.bounds);
      else check_lin_case(c);
    }
}

}  // namespace

// The fast set (also under ASan in CI): every dtype with K = 3 (uneven, the
// last slice of width 1 holding a label), and K = 2 in the section cases
// below; K = 1 and the whole dtype × tiling product are [matrix].
TEST_CASE("vocab-parallel fused linear: K = 3 ranks equal the unsharded path in every dtype",
          "[fused_linear][vocab_parallel][small]") {
  lin_config c;  // V = 37
  c.seed = 31;
  for (gc::dtype d : {gc::dtype::float32, gc::dtype::float16, gc::dtype::bfloat16}) {
    c.dtype = d;
    check_sharded_case(c, {0, 20, 36, 37});
  }
}

TEST_CASE("vocab-parallel fused linear: every dtype with every tiling",
          "[fused_linear][vocab_parallel][matrix]") {
  for (gc::dtype d : {gc::dtype::float32, gc::dtype::float16, gc::dtype::bfloat16})
    for (const std::vector<int64_t>& bounds :
         std::vector<std::vector<int64_t>>{{0, 37}, {0, 12, 37}, {0, 20, 36, 37}, {0, 1, 2, 37},
                                           {0, 9, 18, 27, 36, 37}}) {
      lin_config c;
      c.dtype = d;
      c.seed = 33;
      c.chunk_rows = 3;
      check_sharded_case(c, bounds, true);
    }
}

TEST_CASE("vocab-parallel fused linear: a budget of one row, accumulate vs overwrite",
          "[fused_linear][vocab_parallel][small]") {
  lin_sections(gc::dtype::bfloat16, 32,
               {{"one row per chunk, H = 1, a width-1 slice first",
                 [](lin_config& x) { x.chunk_rows = 1; x.hidden = 1; }, {0, 1, 19, 37}},
                {"accumulate into bfloat16 grad_weight, no bias, strides", bf16_accumulate_strided,
                 {0, 18, 37}},
                {"accumulate into float, token weights, explicit pairs",
                 [](lin_config& x) {
                   accumulate_weighted_pairs(x);
                   x.dtype = gc::dtype::float16;
                 },
                 {0, 5, 6, 37}}},
               true);
}

TEST_CASE("vocab-parallel fused linear: a caller's loss and a two-sided term",
          "[fused_linear][vocab_parallel][small]") {
  lin_sections(gc::dtype::bfloat16, 34,
               {{"log cosh through vocab_linear_step<Loss>",
                 [](lin_config& x) { x.user_loss = 0.7; }, {0, 20, 36, 37}},
                {"nca_pair, reduction::none with grad_output",
                 [](lin_config& x) {
                   x.loss = loss_type::nca_pair;
                   x.reduce = geopref::reduction::none;
                   x.grad_output = true;
                 },
                 {0, 18, 37}}},
               true);
}

// A logit transform through every fused-linear entry (issue 24's mutation
// pass on the transform: chunk_forward, the backward's map, the size
// query's validation and the vocab-parallel stats ignored it without a
// failing fast test). fused_linear_step against the CPU reference and the
// unfused train_step path (bounds_of's error model with its transform terms:
// e'_z = (s/T)·e_z + transform_error_at, G's slope error), the vocab-parallel
// step over K = 3 ranks, fused_linear_logps giving the step's bits; every
// dtype's map (scale_map; softcap_map with tanhf for float, the MUFU tanh
// for 16-bit logits); an invalid transform refused by every linear size query.
TEST_CASE("fused linear with a logit transform: step, vocab-parallel step, logps",
          "[fused_linear][small][transform]") {
  for_each_linear_transform<lin_config>(24100, [](const lin_config& c, uint64_t&) {
    check_lin_case(c);  // chunks of 4 rows: pairs cross chunk boundaries
    check_sharded_case(c, {0, 20, 36, 37});
    check_logps_as_step(c, false);  // fused_linear_logps: the forward alone, the step's bits
  });
}

TEST_CASE("fused linear: an invalid logit transform is refused by every linear size query",
          "[fused_linear][small][transform]") {
  lin_config c;
  const lin_problem p = make_lin(c);
  lin_device d(p);
  for (const geopref::logit_transform& bad :
       {geopref::logit_transform{0.0, 0.0, 1.0}, geopref::logit_transform{1.0, -2.0, 1.0},
        geopref::logit_transform{1.0, 0.0, 0.0}, geopref::logit_transform{NAN, 0.0, 1.0}}) {
    INFO("s " << bad.scale << " c " << bad.softcap << " T " << bad.temperature);
    gc::linear_train_args a = train_args_of(p, d);
    a.in.logit_transform = bad;
    const geopref::options opt = options_of(c);
    size_t bytes = 0;
    CHECK(gc::fused_linear_step(nullptr, bytes, a, opt) == status::invalid_logit_transform);
    gc::linear_logps_args la;
    la.in = a.in;
    la.seq_logps = reinterpret_cast<float*>(16);  // never written: the size query
    CHECK(gc::fused_linear_logps(nullptr, bytes, la, opt) == status::invalid_logit_transform);
    gc::vocab_linear_stats_args sa;
    sa.in = a.in;
    sa.slice = {0, c.vocab, 0, 1};
    CHECK(gc::vocab_linear_stats(nullptr, bytes, sa, opt) == status::invalid_logit_transform);
    gc::vocab_linear_train_args va;
    va.train = a;
    va.slice = {0, c.vocab, 0, 1};
    CHECK(gc::vocab_linear_step(nullptr, bytes, va, opt) == status::invalid_logit_transform);
  }
}
