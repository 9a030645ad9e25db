// bindings/torch/csrc/ops_vocab.cpp — the vocab-parallel geopref torch
// operators (docs/distributed.md §1): one rank's part of a step whose logits
// (or output projection) are split by vocabulary columns over K ranks. The
// caller composes them with its own all-gather of the records:
//
//   records = vocab_parallel_stats(my_logits_slice, ...)          [N, 4]
//   gathered = all_gather(records)                                 [K, N, 4]
//   vocab_parallel_train_step(my_logits_slice, ..., gathered, ...) the loss, metrics and
//                                                                  my slice's gradient
//
// Their schemas and CPU kernels (the CPU reference, geopref/reference/
// vocab_parallel.hpp, in double); the CUDA kernels are in ops_cuda.cpp and
// ops_linear_cuda.cpp (the C ABI's geopref_vocab_parallel_* and
// geopref_vocab_linear_*); fake kernels and autograd in geopref_torch/_ops.py.
//
//   vocab_slice: int[4], the fields of geopref_vocab_slice in order: begin
//     (the slice's first global column), total (V), rank, n_ranks (K).
//   records: one record per row of this rank's slice, an opaque tensor to
//     all-gather, never to read: on CUDA the library's 16-byte vocab_record
//     as int32 [N, 4] (float m, s, label bits, then int32 tag); on CPU the
//     reference's record in float64 [N, 4] (m, s, label, tag = 2·rank + owns),
//     so that the CPU path keeps double precision. The step takes the
//     gathered [K, N, 4] (slots in any order: a record carries its rank).
//
//   vocab_parallel_stats(logits, labels, offsets, vocab_slice, options, check,
//                        logit_transform) -> records
//     logits: this rank's slice [N, V_r]; labels (global columns) and offsets
//     as pref_loss's. Of the options it reads ignore_index.
//   vocab_parallel_train_step(logits, labels, offsets, records, pairs?, soft_labels?,
//                             ref_logps?, weights?, token_weights?, vocab_slice, options,
//                             grad, check, logit_transform, grad_output?)
//       -> (loss, seq_logps, metrics, metric_sums, grad_logits)
//     The combine in rank order, the pair step and, with `grad`, this rank's
//     slice of dLoss/dlogits [N, V_r] in the logits' dtype (at an upstream
//     gradient of 1, or grad_output: [] or [P] for reduction "none"); [0]
//     without. Everything but the gradient is the same on every rank.
//   vocab_parallel_logps(logits, labels, offsets, records, token_weights?, vocab_slice,
//                        options, check, logit_transform) -> (seq_logps, counts)
//     The same combine for a forward-only pass (the reference model).
//   vocab_linear_stats(hidden, weight, bias?, labels, offsets, vocab_slice, options,
//                      chunk_bytes, check, logit_transform) -> records
//   vocab_linear_step(hidden, weight, bias?, labels, offsets, records, pairs?, soft_labels?,
//                     ref_logps?, weights?, token_weights?, vocab_slice, options, chunk_bytes,
//                     grad_mask, check, logit_transform, grad_output?)
//       -> (loss, seq_logps, metrics, metric_sums, grad_hidden, grad_weight, grad_bias)
//     The same from the hidden states [N, H] (the same on every rank) and
//     this rank's rows of the projection, weight [V_r, H] and bias [V_r]:
//     grad_weight and grad_bias are this rank's slices, complete;
//     grad_hidden is this rank's partial G_r·W_r, which the caller sums over
//     the ranks (an all-reduce). On CPU the logits Z_r = H·W_rᵀ + b_r and the
//     products are formed whole in double (as reference/vocab_linear.hpp
//     does), then the logits path above runs on them.
//   vocab_linear_accumulate(grad_output, <vocab_linear_step's arguments but grad_output>,
//                           grad_weight_acc?, grad_bias_acc?) -> grad_hidden
//     The same step with the upstream gradient grad_output, grad_weight and
//     grad_bias added to the caller's buffers instead of returned (the C
//     ABI's `accumulate`): grad_weight_acc [V_r, H] float32 (the C ABI's
//     grad_weight_float32, for any weight dtype) or the weight's dtype,
//     grad_bias_acc [V_r] float32; returns the partial grad_hidden (or [0]
//     without grad_mask[0]). What vocab_linear_loss's backward runs with
//     grad_weight_accumulator / grad_bias_accumulator.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <array>
#include <tuple>
#include <vector>

#include "common.h"
#include "cpu.h"
#include "geopref/reference/vocab_parallel.hpp"
#include "linear.h"
#include "vocab.h"

namespace geopref_torch {
namespace {

namespace ref = geopref::reference;
using c10::optional;

/// The slice's tokens as the reference takes them (cpu_tokens), and the slice.
struct cpu_slice : cpu_tokens {
  geopref_vocab_slice_fields slice;
  cpu_slice(const Tensor& z, const Tensor& y, const Tensor& off, c10::IntArrayRef vocab_slice,
            c10::ArrayRef<double> logit_transform, const char* op)
      : cpu_tokens(z, y, off, logit_transform, op),
        slice(to_vocab_slice(vocab_slice, z.size(1), op)) {}
};

// The CPU record as float64 [4]: m, s, label, tag = 2·rank + owns.
constexpr int64_t RECORD_VALUES = 4;

Tensor records_tensor(const std::vector<ref::vocab_record>& r, const Tensor& like) {
  Tensor out = at::empty({static_cast<int64_t>(r.size()), RECORD_VALUES},
                         like.options().dtype(at::kDouble));
  double* p = out.data_ptr<double>();
  for (size_t t = 0; t < r.size(); ++t) {
    p[4 * t] = r[t].m;
    p[4 * t + 1] = r[t].s;
    p[4 * t + 2] = r[t].label;
    p[4 * t + 3] = 2.0 * r[t].rank + (r[t].owns ? 1.0 : 0.0);
  }
  return out;
}

/// The gathered records [K, N, 4] float64 as the reference's [K·N].
std::vector<ref::vocab_record> gathered_records(const Tensor& records, int64_t n_rows,
                                                int n_ranks, const char* op) {
  TORCH_CHECK_TYPE(records.scalar_type() == at::kDouble, "geopref.", op,
                   ": CPU records must be float64 (vocab_parallel_stats' on CPU), got ",
                   records.scalar_type());
  TORCH_CHECK_VALUE(records.dim() == 3 && records.size(0) == n_ranks &&
                        records.size(1) == n_rows && records.size(2) == RECORD_VALUES,
                    "geopref.", op, ": records must be the gathered [n_ranks, N, 4] = [", n_ranks,
                    ", ", n_rows, ", 4], got ", records.sizes());
  TORCH_CHECK_VALUE(records.device().is_cpu(), "geopref.", op,
                    ": records must be on the logits' device (CPU)");
  const Tensor c = records.contiguous();
  const double* p = c.data_ptr<double>();
  std::vector<ref::vocab_record> r(static_cast<size_t>(n_ranks * n_rows));
  for (size_t i = 0; i < r.size(); ++i) {
    const double tag = p[4 * i + 3];
    // A tag that is not 2·rank + {0, 1} names no rank: the reference's
    // invalid_vocab_records (rank -1), as a record the kernels cannot place.
    const bool ok = tag >= 0 && tag == static_cast<double>(static_cast<int64_t>(tag));
    r[i].m = p[4 * i];
    r[i].s = p[4 * i + 1];
    r[i].label = p[4 * i + 2];
    r[i].rank = ok ? static_cast<int>(static_cast<int64_t>(tag) / 2) : -1;
    r[i].owns = ok && static_cast<int64_t>(tag) % 2 == 1;
  }
  return r;
}

Tensor stats_cpu(const cpu_slice& sl, const geopref::options& opt, const char* op) {
  const int64_t N = sl.logits.size(0);
  std::vector<ref::vocab_record> rec(static_cast<size_t>(N));
  const geopref::status st = visit_float(sl.logits, "logits", op, [&](auto tag) {
    const auto in = sl.inputs<typename decltype(tag)::type>();
    return ref::vocab_stats(in, sl.slice.begin, sl.slice.total, static_cast<int>(sl.slice.rank),
                            opt, rec.data());
  });
  check_status(static_cast<int>(st), op);
  return records_tensor(rec, sl.logits);
}

Tensor vocab_parallel_stats_cpu(const Tensor& logits, const Tensor& labels, const Tensor& offsets,
                                c10::IntArrayRef vocab_slice, c10::ArrayRef<double> options,
                                bool /*check*/, c10::ArrayRef<double> logit_transform) {
  const char* op = "vocab_parallel_stats";
  const geopref::options opt = to_options(options, op);
  const cpu_slice sl(logits, labels, offsets, vocab_slice, logit_transform, op);
  return stats_cpu(sl, opt, op);
}

/// The step of one rank over its slice: the combine of the gathered records
/// (vocab_combine), the unsharded rest from lse and ℓ (the reference's
/// run_rows, which compute_vocab_parallel runs too), and the slice's
/// gradient (vocab_slice_grad) when `grad` is given ([N, grad_ld] double).
struct step_out {
  Tensor value, seq, metrics, sums, counts;
};
step_out step_cpu(const cpu_slice& sl, const Tensor& records, const pair_tensors* pr,
                  const Tensor& token_weights, const geopref::options& opt, const Tensor* upstream,
                  double* grad, const char* op) {
  const int64_t N = sl.logits.size(0), S = sl.offsets.size(0) - 1;
  const int K = static_cast<int>(sl.slice.n_ranks);
  const std::vector<ref::vocab_record> rec = gathered_records(records, N, K, op);
  const int64_t P = pr != nullptr ? pr->n_pairs : 0;
  const bool per_pair = opt.reduce == geopref::reduction::none;
  const Tensor up = upstream_of(upstream, opt, P, sl.logits, at::kDouble, "the CPU", op);
  const auto f64 = sl.logits.options().dtype(at::kDouble);
  step_out o;
  Tensor pair_losses = at::empty({P}, f64);
  o.seq = at::empty({S}, f64);
  o.counts = at::empty({S}, sl.logits.options().dtype(at::kLong));
  std::vector<double> lse(static_cast<size_t>(N)), logp(static_cast<size_t>(N)),
      grad_seq(static_cast<size_t>(S));
  ref::outputs out;
  const int64_t no_pair = 0;  // explicit pairing with P = 0: no pair terms at all
  const geopref::status st = visit_float(sl.logits, "logits", op, [&](auto tag) {
    auto in = sl.inputs<typename decltype(tag)::type>();
    if (pr != nullptr) {
      pr->fill(in, in.token_weights);
    } else {
      in.n_pairs = 0;
      in.pairs = &no_pair;
    }
    in.token_weights = data_or_null<double>(token_weights);
    if (up.defined()) {
      if (per_pair) in.grad_pair_losses = up.data_ptr<double>();
      else in.grad_loss = up.data_ptr<double>()[0];
    }
    // Validated as compute() validates, with the labels against the whole
    // vocabulary (the slice's inputs never read the logits here).
    auto whole = in;
    whole.vocab = whole.ld = sl.slice.total;
    if (const auto s = ref::detail::validate_inputs(whole, opt, out); s != geopref::status::success)
      return s;
    const int64_t rows_in_seqs = S > 0 ? sl.offsets.data_ptr<int64_t>()[S] : 0;
    std::vector<bool> scored(static_cast<size_t>(N));
    for (int64_t t = 0; t < N; ++t)
      scored[static_cast<size_t>(t)] = t < rows_in_seqs && in.labels[t] != opt.ignore_index;
    if (const auto s = ref::vocab_combine(rec.data(), K, N, scored, lse.data(), logp.data());
        s != geopref::status::success)
      return s;
    out.seq_logps = o.seq.data_ptr<double>();
    out.seq_counts = o.counts.data_ptr<int64_t>();
    out.pair_losses = pair_losses.data_ptr<double>();
    out.grad_seq_logps = grad_seq.data();
    ref::detail::run_rows(in, opt, ref::detail::builtin_margin{opt.loss}, lse, logp, out);
    if (grad != nullptr)
      ref::vocab_slice_grad(in, sl.slice.begin, opt, lse.data(), grad_seq.data(), grad,
                            sl.logits.size(1));
    return geopref::status::success;
  });
  check_status(static_cast<int>(st), op);
  o.value = per_pair ? pair_losses : at::scalar_tensor(out.loss, f64);
  o.metrics = metrics_tensor(out.stats, sl.logits);
  o.sums = metric_sums_tensor(out.sums, sl.logits);
  return o;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> vocab_parallel_train_step_cpu(
    const Tensor& logits, const Tensor& labels, const Tensor& offsets, const Tensor& records,
    const optional<Tensor>& pairs, const optional<Tensor>& soft_labels,
    const optional<Tensor>& ref_logps, const optional<Tensor>& weights,
    const optional<Tensor>& token_weights, c10::IntArrayRef vocab_slice,
    c10::ArrayRef<double> options, bool grad, bool /*check*/,
    c10::ArrayRef<double> logit_transform, const optional<Tensor>& grad_output) {
  const char* op = "vocab_parallel_train_step";
  const geopref::options opt = to_options(options, op);
  const cpu_slice sl(logits, labels, offsets, vocab_slice, logit_transform, op);
  const int64_t N = sl.logits.size(0), W = sl.logits.size(1), S = sl.offsets.size(0) - 1;
  const pair_tensors pr(sl.logits, S, pairs, soft_labels, ref_logps, weights, token_weights,
                        at::kDouble, op);
  Tensor g = at::zeros({grad ? N : 0, grad ? W : 0}, sl.logits.options().dtype(at::kDouble));
  const step_out o = step_cpu(sl, records, &pr, pr.token_weights, opt, given(grad_output),
                              grad ? g.data_ptr<double>() : nullptr, op);
  const auto od = out_dtype(logits);
  return {o.value.to(od), o.seq.to(od), o.metrics, o.sums,
          grad ? g.to(logits.scalar_type()) : at::empty({0}, logits.options())};
}

std::tuple<Tensor, Tensor> vocab_parallel_logps_cpu(
    const Tensor& logits, const Tensor& labels, const Tensor& offsets, const Tensor& records,
    const optional<Tensor>& token_weights, c10::IntArrayRef vocab_slice,
    c10::ArrayRef<double> options, bool /*check*/, c10::ArrayRef<double> logit_transform) {
  const char* op = "vocab_parallel_logps";
  const geopref::options opt = to_options(options, op);
  const cpu_slice sl(logits, labels, offsets, vocab_slice, logit_transform, op);
  const Tensor tw = cpu_token_weights(token_weights, sl.logits, sl.logits.size(0), op);
  const step_out o = step_cpu(sl, records, nullptr, tw, opt, nullptr, nullptr, op);
  return {o.seq.to(out_dtype(logits)), o.counts};
}

/// Z_r = H·W_rᵀ + b_r in double, from the elements as given (the
/// reference's widen + project).
Tensor slice_logits(const linear_tensors& t) {
  Tensor z = at::matmul(t.hidden.to(at::kDouble), t.weight.to(at::kDouble).t());
  if (t.bias.defined()) z = z + t.bias.to(at::kDouble);
  return z.contiguous();
}

Tensor vocab_linear_stats_cpu(const Tensor& hidden, const Tensor& weight,
                              const optional<Tensor>& bias, const Tensor& labels,
                              const Tensor& offsets, c10::IntArrayRef vocab_slice,
                              c10::ArrayRef<double> options, int64_t chunk_bytes, bool /*check*/,
                              c10::ArrayRef<double> logit_transform) {
  const char* op = "vocab_linear_stats";
  const geopref::options opt = to_options(options, op);
  const linear_tensors t = check_linear(hidden, weight, bias, labels, offsets, chunk_bytes, op);
  visit_float(t.hidden, "hidden", op, [](auto) { return 0; });  // the dtypes the reference reads
  const cpu_slice sl(slice_logits(t), labels, offsets, vocab_slice, logit_transform, op);
  return stats_cpu(sl, opt, op);
}

/// vocab_linear_step (upstream null: gradients at an upstream gradient of
/// 1, or the optional grad_output) and, with accumulators,
/// vocab_linear_accumulate: grad_weight and grad_bias added to the caller's
/// buffers (check_accumulators: float32 or the weight's dtype) instead of
/// returned, each sum formed in double and rounded once, as the C ABI's
/// `accumulate` (and grad_weight_float32 for a float32 buffer) does.
vocab_linear_result vocab_linear_cpu(const Tensor* upstream, GEOPREF_VOCAB_LINEAR_PARAMS,
                                     const char* op, const optional<Tensor>& grad_weight_acc,
                                     const optional<Tensor>& grad_bias_acc) {
  const geopref::options opt = to_options(options, op);
  const linear_tensors t = check_linear(hidden, weight, bias, labels, offsets, chunk_bytes, op);
  visit_float(t.hidden, "hidden", op, [](auto) { return 0; });  // the dtypes the reference reads
  const accumulators acc = check_accumulators(grad_weight_acc, grad_bias_acc, t, op);
  auto mask = effective_mask(grad_mask, t);
  if (acc.any()) mask[1] = mask[2] = false;  // into the accumulators instead
  const bool any = mask[0] || mask[1] || mask[2] || acc.any();
  const cpu_slice sl(slice_logits(t), labels, offsets, vocab_slice, logit_transform, op);
  const int64_t N = t.n_rows(), S = sl.offsets.size(0) - 1;
  const pair_tensors pr(sl.logits, S, pairs, soft_labels, ref_logps, weights, token_weights,
                        at::kDouble, op);
  Tensor G = at::zeros({any ? N : 0, any ? t.vocab() : 0}, sl.logits.options());
  const step_out o = step_cpu(sl, records, &pr, pr.token_weights, opt, upstream,
                              any ? G.data_ptr<double>() : nullptr, op);
  // grad_H (partial) = G_r·W_r, grad_W_r = G_rᵀ·H, grad_b_r = Σ_t G_r[t, ·].
  const auto grad_w = [&] { return at::matmul(G.t(), t.hidden.to(at::kDouble)); };
  const Tensor gh = mask[0] ? at::matmul(G, t.weight.to(at::kDouble)).to(t.hidden.scalar_type())
                            : empty_grad(t.hidden);
  const Tensor gw = mask[1] ? grad_w().to(t.weight.scalar_type()) : empty_grad(t.weight);
  const Tensor gb = mask[2] ? G.sum(0).to(t.bias.scalar_type()) : empty_grad(t.hidden);
  if (acc.weight.defined()) acc.weight.copy_(acc.weight.to(at::kDouble) + grad_w());
  if (acc.bias.defined()) acc.bias.copy_(acc.bias.to(at::kDouble) + G.sum(0));
  const auto od = out_dtype(t.hidden);
  return {o.value.to(od), o.seq.to(od), o.metrics, o.sums, gh, gw, gb};
}

GEOPREF_VOCAB_LINEAR_KERNELS(cpu, vocab_linear_cpu)

}  // namespace
}  // namespace geopref_torch

#define GEOPREF_VOCAB_PAIRS \
  "Tensor? pairs, Tensor? soft_labels, Tensor? ref_logps, Tensor? weights, Tensor? token_weights"

#define GEOPREF_VOCAB_LINEAR_ARGS                                                          \
  "Tensor hidden, Tensor weight, Tensor? bias, Tensor labels, Tensor offsets, "           \
  "Tensor records, " GEOPREF_VOCAB_PAIRS ", int[] vocab_slice, float[] options, "         \
  "int chunk_bytes, bool[3] grad_mask, bool check, float[] logit_transform"

TORCH_LIBRARY_FRAGMENT(geopref, m) {
  m.def(
      "vocab_parallel_stats(Tensor logits, Tensor labels, Tensor offsets, int[] vocab_slice, "
      "float[] options, bool check, float[] logit_transform) -> Tensor records");
  m.def(
      "vocab_parallel_train_step(Tensor logits, Tensor labels, Tensor offsets, Tensor records, "
      GEOPREF_VOCAB_PAIRS ", int[] vocab_slice, float[] options, bool grad, bool check, "
      "float[] logit_transform, Tensor? grad_output=None) -> (Tensor loss, Tensor seq_logps, "
      "Tensor metrics, Tensor metric_sums, Tensor grad_logits)");
  m.def(
      "vocab_parallel_logps(Tensor logits, Tensor labels, Tensor offsets, Tensor records, "
      "Tensor? token_weights, int[] vocab_slice, float[] options, bool check, "
      "float[] logit_transform) -> (Tensor seq_logps, Tensor counts)");
  m.def(
      "vocab_linear_stats(Tensor hidden, Tensor weight, Tensor? bias, Tensor labels, "
      "Tensor offsets, int[] vocab_slice, float[] options, int chunk_bytes, bool check, "
      "float[] logit_transform) -> Tensor records");
  m.def("vocab_linear_step(" GEOPREF_VOCAB_LINEAR_ARGS
        ", Tensor? grad_output=None) -> (Tensor loss, Tensor seq_logps, Tensor metrics, "
        "Tensor metric_sums, Tensor grad_hidden, Tensor grad_weight, Tensor grad_bias)");
  m.def("vocab_linear_accumulate(Tensor grad_output, " GEOPREF_VOCAB_LINEAR_ARGS
        ", Tensor(a!)? grad_weight_acc=None, Tensor(b!)? grad_bias_acc=None) "
        "-> Tensor grad_hidden");
  m.def("vocab_slice_fields() -> str[]", &geopref_torch::vocab_slice_fields);
}

TORCH_LIBRARY_IMPL(geopref, CPU, m) {
  GEOPREF_TORCH_VOCAB_LOGITS_OPS(GEOPREF_TORCH_CPU_IMPL)
  GEOPREF_TORCH_VOCAB_LINEAR_OPS(GEOPREF_TORCH_CPU_IMPL)
}
