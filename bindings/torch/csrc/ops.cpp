// bindings/torch/csrc/ops.cpp — the geopref torch operators: their schemas
// (TORCH_LIBRARY) and their CPU kernels, which call the CPU reference
// (geopref/reference). The CUDA kernels are in ops_cuda.cpp (CUDA builds
// only); fake (meta) kernels and autograd are registered from Python
// (geopref_torch/_ops.py), so that torch.compile traces every operator.
//
//   pref_loss(logits, labels, offsets, pairs?, soft_labels?, ref_logps?, weights?,
//             token_weights?, options, check, logit_transform)
//       -> (loss, seq_logps, metrics, lse, grad_seq, seq_scale, metric_sums)
//     The training step's forward. lse [N] and grad_seq [S] (g_s = dLoss/dL_s
//     for an upstream gradient of 1) are what the backward needs: for a
//     reduced loss the backward is logits_grad(..., lse, grad_seq * upstream).
//     seq_scale [S] = d seq_logps / d L_s (1, or 1/n_s where the margin is
//     length-normalised, 0 for n_s = 0): how an upstream gradient on seq_logps
//     reaches the summed log-probs, so seq_logps is differentiable too.
//     token_weights [N] (LD-DPO's length desensitisation): L_s = Σ_t w_t ℓ_t
//     over the scored rows (not differentiable). metric_sums [8] float64: the
//     metrics as sums over the pairs, then P (geopref::metric_sums), for a
//     data-parallel all-reduce.
//   pref_loss_grad_seq(grad_output, <pref_loss's arguments>) -> grad_seq
//     g_s for an upstream gradient per pair (reduction none): the forward runs
//     again, since g_s is not linear in a per-pair upstream.
//   sequence_logps(logits, labels, offsets, token_weights?, options, check,
//                  logit_transform) -> (seq_logps, lse, counts, seq_scale)
//     The forward alone (the reference model's pass), differentiable; of the
//     options it reads ignore_index and whether the margin averages
//     (average_logps, or a loss that forces it), so a loss's options give
//     the ref_logps that loss expects.
//   logits_grad(logits, labels, offsets, token_weights?, lse, grad_seq, ignore_index,
//               check, logit_transform) -> grad
//     The backward pass alone: grad[t, v] = g_s w_t (1[v = y_t] - exp(z[t, v] - lse_t)).
//   token_logps(logits, labels, ignore_index, entropy, check, logit_transform,
//               log_sum_sq_probs=False, mean_logits=False, is_top1=False)
//       -> (logps, lse, entropy, log_sum_sq_probs, mean_logits, is_top1)
//     The per-token primitive: logps [N] = z[t, y_t] - lse_t (0 for rows whose
//     label is ignore_index), lse [N] (0 there), and each statistic asked for
//     [N] (else [0]; 0 on ignored rows), TRL 1.x's: the entropy H_t =
//     -sum_v p log p, log sum_v p_v^2, the mean transformed logit, and is_top1
//     (bool: the label is the row's FIRST arg-max). No sequences.
//   token_logps_grad(logits, labels, lse, grad, ignore_index, check, logit_transform,
//                    grad_entropy?, entropy?) -> grad_logits
//     Its backward: grad_logits[t, v] = g_t (1[v = y_t] - p_tv)
//     - e_t p_tv (log p_tv + H_t) (e_t = grad_entropy, H_t the forward's
//     entropy, both [N] or neither), zero rows where the label is
//     ignore_index; in the logits' dtype.
//   loss_names() -> str[]
//     The losses the compiled library knows, in its order.
//   options_fields() -> (names, kinds, widths, defaults, flags, docs, choices)
//     GEOPREF_OPTIONS_FIELDS, from which geopref_torch makes its keywords.
//
// options: float[], the fields of geopref::options (GEOPREF_OPTIONS_FIELDS)
// in the list's order, each as `width` values: numbers, bools as 0/1, enums
// as indices into `choices` (common.h, to_options). Invalid values: ValueError.
//   logit_transform_fields() -> (names, defaults, flags, docs)
//     GEOPREF_LOGIT_TRANSFORM_FIELDS, from which geopref_torch makes its
//     keywords (logit_scale, softcap, temperature).
//
// logit_transform: float[], the fields of geopref::logit_transform in the
// list's order (scale, softcap, temperature); every operator that reads
// logits (or forms them from hidden states) applies z' = c tanh(s z / c) / T
// (s z / T for c = 0) to each logit before the softmax, and its backward
// differentiates through it: the formulas above hold with z' for z, times
// dz'/dz. Invalid values: ValueError (common.h, to_logit_transform).
//
// Float outputs are float32 (float64 for float64 logits); metrics [7] are
// float64 in the order of geopref::metrics (TRL's names, see _ops.py).
#include <Python.h>  // first, as Python asks: only for the module stub below

#include <ATen/ATen.h>
#include <torch/library.h>

#include <Eigen/Core>

#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "common.h"
#include "cpu.h"
#include "geopref/reference/reference.hpp"

namespace geopref_torch {
namespace {

namespace ref = geopref::reference;
using c10::optional;

/// Calls fn(type_tag<Logit>{}) with the reference's type for the logits' dtype.
template <class Fn>
auto visit_logits(const Tensor& logits, const char* op, Fn&& fn) {
  return visit_float(logits, "logits", op, std::forward<Fn>(fn));
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> pref_loss_cpu(
    GEOPREF_PREF_LOSS_PARAMS) {
  const geopref::options opt = to_options(options, "pref_loss");
  const cpu_tokens tok(logits, labels, offsets, logit_transform, "pref_loss");
  const int64_t N = logits.size(0), S = offsets.size(0) - 1;
  const pair_tensors pr(logits, S, pairs, soft_labels, ref_logps, weights, token_weights,
                        at::kDouble, "pref_loss");
  const auto f64 = logits.options().dtype(at::kDouble);
  Tensor lse = at::empty({N}, f64), seq = at::empty({S}, f64), gseq = at::empty({S}, f64);
  Tensor pair_losses = at::empty({pr.n_pairs}, f64);
  Tensor counts = at::empty({S}, logits.options().dtype(at::kLong));
  ref::outputs out;
  out.seq_counts = counts.data_ptr<int64_t>();
  out.lse = lse.data_ptr<double>();
  out.seq_logps = seq.data_ptr<double>();
  out.grad_seq_logps = gseq.data_ptr<double>();
  out.pair_losses = pair_losses.data_ptr<double>();
  const geopref::status st = visit_logits(tok.logits, "pref_loss", [&](auto tag) {
    auto in = tok.inputs<typename decltype(tag)::type>();
    pr.fill(in, in.token_weights);
    return ref::compute(in, opt, out);
  });
  check_status(static_cast<int>(st), "pref_loss");
  const auto od = out_dtype(logits);
  Tensor value = opt.reduce == geopref::reduction::none ? pair_losses
                                                        : at::scalar_tensor(out.loss, f64);
  return {value.to(od),      seq.to(od),  metrics_tensor(out.stats, logits),
          lse.to(od),        gseq.to(od), seq_scale(counts, opt, od),
          metric_sums_tensor(out.sums, logits)};
}

Tensor pref_loss_grad_seq_cpu(const Tensor& grad_output, GEOPREF_PREF_LOSS_PARAMS) {
  const geopref::options opt = to_options(options, "pref_loss_grad_seq");
  const cpu_tokens tok(logits, labels, offsets, logit_transform, "pref_loss_grad_seq");
  const int64_t S = offsets.size(0) - 1;
  const pair_tensors pr(logits, S, pairs, soft_labels, ref_logps, weights, token_weights,
                        at::kDouble, "pref_loss_grad_seq");
  const bool per_pair = opt.reduce == geopref::reduction::none;
  const Tensor up = upstream_of(&grad_output, opt, pr.n_pairs, logits, at::kDouble,
                                "the logits' device", "pref_loss_grad_seq");
  Tensor gseq = at::empty({S}, logits.options().dtype(at::kDouble));
  ref::outputs out;
  out.grad_seq_logps = gseq.data_ptr<double>();
  const geopref::status st = visit_logits(tok.logits, "pref_loss_grad_seq", [&](auto tag) {
    auto in = tok.inputs<typename decltype(tag)::type>();
    pr.fill(in, in.token_weights);
    if (per_pair) in.grad_pair_losses = up.data_ptr<double>();
    else in.grad_loss = up.data_ptr<double>()[0];
    return ref::compute(in, opt, out);
  });
  check_status(static_cast<int>(st), "pref_loss_grad_seq");
  return gseq.to(out_dtype(logits));
}

std::tuple<Tensor, Tensor, Tensor, Tensor> sequence_logps_cpu(
    const Tensor& logits, const Tensor& labels, const Tensor& offsets,
    const optional<Tensor>& token_weights, c10::ArrayRef<double> options, bool /*check*/,
    c10::ArrayRef<double> logit_transform) {
  const geopref::options opt = to_options(options, "sequence_logps");
  const cpu_tokens tok(logits, labels, offsets, logit_transform, "sequence_logps");
  const int64_t N = logits.size(0), S = offsets.size(0) - 1;
  const Tensor tw = cpu_token_weights(token_weights, tok.logits, N, "sequence_logps");
  const auto f64 = logits.options().dtype(at::kDouble);
  Tensor lse = at::empty({N}, f64), seq = at::empty({S}, f64);
  Tensor counts = at::empty({S}, logits.options().dtype(at::kLong));
  ref::outputs out;
  out.lse = lse.data_ptr<double>();
  out.seq_logps = seq.data_ptr<double>();
  out.seq_counts = counts.data_ptr<int64_t>();
  const int64_t no_pair = 0;  // explicit pairing with P = 0: no pair terms at all
  const geopref::status st = visit_logits(tok.logits, "sequence_logps", [&](auto tag) {
    auto in = tok.inputs<typename decltype(tag)::type>();
    in.n_pairs = 0;
    in.pairs = &no_pair;
    in.token_weights = data_or_null<double>(tw);
    return ref::compute(in, opt, out);
  });
  check_status(static_cast<int>(st), "sequence_logps");
  const auto od = out_dtype(logits);
  return {seq.to(od), lse.to(od), counts, seq_scale(counts, opt, od)};
}

Tensor logits_grad_cpu(const Tensor& logits, const Tensor& labels, const Tensor& offsets,
                       const optional<Tensor>& token_weights, const Tensor& lse,
                       const Tensor& grad_seq, int64_t ignore_index, bool /*check*/,
                       c10::ArrayRef<double> logit_transform) {
  geopref::options opt;
  opt.ignore_index = ignore_index;
  const cpu_tokens tok(logits, labels, offsets, logit_transform, "logits_grad");
  const int64_t N = logits.size(0), V = logits.size(1), S = offsets.size(0) - 1;
  const Tensor tw = cpu_token_weights(token_weights, tok.logits, N, "logits_grad");
  TORCH_CHECK_VALUE(lse.dim() == 1 && lse.size(0) == N && grad_seq.dim() == 1 &&
                        grad_seq.size(0) == S,
                    "geopref.logits_grad: lse must be [N] = [", N, "] and grad_seq [S] = [", S,
                    "], got ", lse.sizes(), " and ", grad_seq.sizes());
  const Tensor l = lse.to(at::kDouble).contiguous(), g = grad_seq.to(at::kDouble).contiguous();
  Tensor grad = at::empty({N, V}, logits.options().dtype(at::kDouble));
  const geopref::status st = visit_logits(tok.logits, "logits_grad", [&](auto tag) {
    auto in = tok.inputs<typename decltype(tag)::type>();
    in.token_weights = data_or_null<double>(tw);
    return ref::logits_grad(in, opt, l.data_ptr<double>(), g.data_ptr<double>(),
                            grad.data_ptr<double>(), V);
  });
  check_status(static_cast<int>(st), "logits_grad");
  return grad.to(logits.scalar_type());
}

/// The reference's rows over CPU tensors (labels as int64, converted once).
struct cpu_rows {
  Tensor logits, labels;
  int64_t ignore_index;
  geopref::logit_transform transform;
  cpu_rows(const Tensor& z, const Tensor& y, int64_t ignore, c10::ArrayRef<double> logit_transform,
           const char* op)
      : logits(check_rows(z, y, op)),
        labels(y.to(at::kLong).contiguous()),
        ignore_index(ignore),
        transform(to_logit_transform(logit_transform, op)) {}
  template <class Logit>
  ref::token_rows<Logit, int64_t> rows() const {
    ref::token_rows<Logit, int64_t> r;
    r.logits = static_cast<const Logit*>(logits.data_ptr());
    r.n_rows = logits.size(0);
    r.vocab = logits.size(1);
    r.ld = row_stride(logits);
    r.labels = labels.data_ptr<int64_t>();
    r.ignore_index = ignore_index;
    r.logit_transform = transform;
    return r;
  }
};

using token_result = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

token_result token_logps_cpu(const Tensor& logits, const Tensor& labels, int64_t ignore_index,
                             bool entropy, bool /*check*/, c10::ArrayRef<double> logit_transform,
                             bool log_sum_sq_probs, bool mean_logits, bool is_top1) {
  const cpu_rows rows(logits, labels, ignore_index, logit_transform, "token_logps");
  const int64_t N = logits.size(0);
  const auto f64 = logits.options().dtype(at::kDouble);
  Tensor logp = at::empty({N}, f64), lse = at::empty({N}, f64);
  const token_stats stats(N, logits, at::kDouble, entropy, log_sum_sq_probs, mean_logits, is_top1);
  ref::token_outputs out;
  out.token_logps = logp.data_ptr<double>();
  out.lse = lse.data_ptr<double>();
  stats.fill(out);
  const geopref::status st = visit_logits(rows.logits, "token_logps", [&](auto tag) {
    return ref::token_logps(rows.rows<typename decltype(tag)::type>(), out);
  });
  check_status(static_cast<int>(st), "token_logps");
  const auto od = out_dtype(logits);
  const auto [h, lssp, mean, top1] = stats.result(od);
  return {logp.to(od), lse.to(od), h, lssp, mean, top1};
}

Tensor token_logps_grad_cpu(const Tensor& logits, const Tensor& labels, const Tensor& lse,
                            const Tensor& grad, int64_t ignore_index, bool /*check*/,
                            c10::ArrayRef<double> logit_transform,
                            const optional<Tensor>& grad_entropy, const optional<Tensor>& entropy) {
  const cpu_rows rows(logits, labels, ignore_index, logit_transform, "token_logps_grad");
  const int64_t N = logits.size(0), V = logits.size(1);
  TORCH_CHECK_VALUE(lse.dim() == 1 && lse.size(0) == N && grad.dim() == 1 && grad.size(0) == N,
                    "geopref.token_logps_grad: lse and grad must be [N] = [", N, "], got ",
                    lse.sizes(), " and ", grad.sizes());
  const Tensor l = lse.to(at::kDouble).contiguous(), g = grad.to(at::kDouble).contiguous();
  // The reference recomputes E = Σ p z′ itself: the forward's entropy is only checked.
  const Tensor e = entropy_upstream(grad_entropy, entropy, N, rows.logits, at::kDouble,
                                    "token_logps_grad").first;
  Tensor out = at::empty({N, V}, logits.options().dtype(at::kDouble));
  const geopref::status st = visit_logits(rows.logits, "token_logps_grad", [&](auto tag) {
    return ref::token_logps_grad(rows.rows<typename decltype(tag)::type>(), l.data_ptr<double>(),
                                 g.data_ptr<double>(), out.data_ptr<double>(), V,
                                 e.defined() ? e.data_ptr<double>() : nullptr);
  });
  check_status(static_cast<int>(st), "token_logps_grad");
  return out.to(logits.scalar_type());
}

/// GEOPREF_LOGIT_TRANSFORM_FIELDS as data: each field's name, default, CLI
/// flag and summary, in the list's order (the order of the operators'
/// logit_transform argument). geopref_torch names its keywords after the flags.
std::tuple<std::vector<std::string>, std::vector<double>, std::vector<std::string>,
           std::vector<std::string>>
logit_transform_fields() {
  std::vector<std::string> names, flags, docs;
  std::vector<double> defaults;
#define GEOPREF_X(type, name, def, flag, doc) \
  names.emplace_back(#name), defaults.push_back(def), flags.emplace_back(flag), docs.emplace_back(doc);
  GEOPREF_LOGIT_TRANSFORM_FIELDS(GEOPREF_X)
#undef GEOPREF_X
  return {names, defaults, flags, docs};
}

/// GEOPREF_OPTIONS_FIELDS as data, in the list's order (the order of the
/// operators' `options` argument): each field's C++ name, kind, width in
/// the packed list, CLI flag, summary and (enums) names, and the packed
/// defaults (geopref::options{}). geopref_torch makes its keywords from it.
std::tuple<std::vector<std::string>, std::vector<std::string>, std::vector<int64_t>,
           std::vector<double>, std::vector<std::string>, std::vector<std::string>,
           std::vector<std::string>>
options_fields() {
  std::vector<std::string> names, kinds, flags, docs, choices;
  std::vector<int64_t> widths;
#define GEOPREF_X(P, kind, type, name, c_name, def, flag, doc)                      \
  names.emplace_back(#name), kinds.emplace_back(#kind), flags.emplace_back(flag),   \
      docs.emplace_back(doc),                                                       \
      widths.push_back(static_cast<int64_t>(packed_width<geopref::field_t<type>>())), \
      choices.push_back(field_choices(static_cast<const geopref::field_t<type>*>(nullptr)));
  GEOPREF_OPTIONS_FIELDS(GEOPREF_X)
#undef GEOPREF_X
  return {names, kinds, widths, pack_options(geopref::options{}), flags, docs, choices};
}

std::vector<std::string> loss_names() {
  std::vector<std::string> v;
  for (int i = 0; i < geopref::LOSS_TYPE_COUNT; ++i)
    v.emplace_back(geopref::loss_name(static_cast<geopref::loss_type>(i)));
  return v;
}

}  // namespace
}  // namespace geopref_torch

#define GEOPREF_PREF_LOSS_ARGS                                                                  \
  "Tensor logits, Tensor labels, Tensor offsets, Tensor? pairs, Tensor? soft_labels, "         \
  "Tensor? ref_logps, Tensor? weights, Tensor? token_weights, float[] options, bool check, "  \
  "float[] logit_transform"

TORCH_LIBRARY(geopref, m) {
  m.def("pref_loss(" GEOPREF_PREF_LOSS_ARGS
        ") -> (Tensor loss, Tensor seq_logps, Tensor metrics, Tensor lse, Tensor grad_seq, "
        "Tensor seq_scale, Tensor metric_sums)");
  m.def("pref_loss_grad_seq(Tensor grad_output, " GEOPREF_PREF_LOSS_ARGS ") -> Tensor");
  m.def(
      "sequence_logps(Tensor logits, Tensor labels, Tensor offsets, Tensor? token_weights, "
      "float[] options, bool check, float[] logit_transform) "
      "-> (Tensor seq_logps, Tensor lse, Tensor counts, Tensor seq_scale)");
  m.def(
      "logits_grad(Tensor logits, Tensor labels, Tensor offsets, Tensor? token_weights, "
      "Tensor lse, Tensor grad_seq, int ignore_index, bool check, float[] logit_transform) "
      "-> Tensor");
  m.def(
      "token_logps(Tensor logits, Tensor labels, int ignore_index, bool entropy, bool check, "
      "float[] logit_transform, bool log_sum_sq_probs=False, bool mean_logits=False, "
      "bool is_top1=False) -> (Tensor logps, Tensor lse, Tensor entropy, "
      "Tensor log_sum_sq_probs, Tensor mean_logits, Tensor is_top1)");
  m.def(
      "token_logps_grad(Tensor logits, Tensor labels, Tensor lse, Tensor grad, int ignore_index, "
      "bool check, float[] logit_transform, Tensor? grad_entropy=None, Tensor? entropy=None) "
      "-> Tensor");
  m.def("loss_names() -> str[]", &geopref_torch::loss_names);
  m.def("options_fields() -> (str[] names, str[] kinds, int[] widths, float[] defaults, "
        "str[] flags, str[] docs, str[] choices)",
        &geopref_torch::options_fields);
  m.def("logit_transform_fields() -> (str[] names, float[] defaults, str[] flags, str[] docs)",
        &geopref_torch::logit_transform_fields);
}

TORCH_LIBRARY_IMPL(geopref, CPU, m) { GEOPREF_TORCH_LOGITS_OPS(GEOPREF_TORCH_CPU_IMPL) }

// `import geopref_torch._C` loads this library, which runs the registrations
// above; the module itself is empty (no pybind11: nothing here depends on
// the Python version beyond this stub).
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
