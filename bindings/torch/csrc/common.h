// bindings/torch/csrc/common.h — what the CPU and CUDA kernels of the
// geopref torch operators share: the non-tensor arguments, their parsing into
// geopref::options, tensor checks, and geopref statuses raised as the Python
// exception a user expects (ValueError, IndexError, TypeError, RuntimeError).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>
#include <cmath>
#include <tuple>
#include <utility>

#include "geopref/losses.hpp"
#include "geopref/options.hpp"
#include "geopref/status.hpp"

namespace geopref_torch {

using at::Tensor;

/// Raises the exception of a non-success status. Python sees:
///   IndexError   a label or pair index out of range (as torch's own gather);
///   TypeError    a dtype the build does not support;
///   RuntimeError workspace, alignment, CUDA and internal errors;
///   ValueError   everything else (shapes, offsets, soft labels, loss parameters).
inline void check_status(int code, const char* op) {
  if (code == 0) return;
  const auto st = static_cast<geopref::status>(code);
  const std::string msg = std::string("geopref.") + op + ": " + geopref::status_string(st);
  switch (st) {
    case geopref::status::label_out_of_range:
    case geopref::status::pair_index_out_of_range: TORCH_CHECK_INDEX(false, msg);
    case geopref::status::unsupported_dtype: TORCH_CHECK_TYPE(false, msg);
    case geopref::status::workspace_too_small:
    case geopref::status::misaligned_pointer:
    case geopref::status::cuda_error:
    case geopref::status::internal_error: TORCH_CHECK(false, msg);
    default: TORCH_CHECK_VALUE(false, msg);
  }
}

/// The loss names the library knows, comma-separated, for error messages.
inline std::string known_losses() {
  std::string s;
  for (int i = 0; i < geopref::LOSS_TYPE_COUNT; ++i) {
    if (i) s += ", ";
    s += geopref::loss_name(static_cast<geopref::loss_type>(i));
  }
  return s;
}

// The options cross the operators' schemas as one `float[] options`: the
// fields of GEOPREF_OPTIONS_FIELDS in the list's order, each as `width`
// values (1, or MAX_LOSS_TERMS for the terms arrays): numbers as they are,
// bools as 0/1, enums as their index in the library's order (names from
// options_fields()). geopref_torch builds it from its keywords, which it
// reads from options_fields() (ops.cpp); a field added to the list changes
// no schema and no backward.

/// How many values a field takes in the packed list.
template <class T>
constexpr std::size_t packed_width() {
  return std::is_array_v<T> ? std::extent_v<T> : 1;
}
#define GEOPREF_X(P, kind, type, name, c_name, def, flag, doc) +packed_width<geopref::field_t<type>>()
inline constexpr std::size_t OPTIONS_WIDTH = 0 GEOPREF_OPTIONS_FIELDS(GEOPREF_X);
#undef GEOPREF_X

// One field's value(s) from the packed list, checked: integers and enums
// must be integral (an enum also in range), so that a bad value is a
// ValueError naming the field, never a cast.
inline int64_t packed_integer(double v, const char* field, const char* op) {
  TORCH_CHECK_VALUE(std::isfinite(v) && v == static_cast<double>(static_cast<int64_t>(v)),
                    "geopref.", op, ": options field ", field, " must be an integer, got ", v);
  return static_cast<int64_t>(v);
}
inline void from_packed(const double* v, double* f, const char*, const char*) { *f = *v; }
inline void from_packed(const double* v, bool* f, const char*, const char*) { *f = *v != 0.0; }
inline void from_packed(const double* v, int64_t* f, const char* field, const char* op) {
  *f = packed_integer(*v, field, op);
}
inline void from_packed(const double* v, int* f, const char* field, const char* op) {
  const int64_t n = packed_integer(*v, field, op);
  TORCH_CHECK_VALUE(n >= 0 && n <= geopref::MAX_LOSS_TERMS, "geopref.", op, ": options field ",
                    field, " must be in [0, ", geopref::MAX_LOSS_TERMS, "], got ", n);
  *f = static_cast<int>(n);
}
template <class E, std::enable_if_t<std::is_enum_v<E>, int> = 0>
void from_packed(const double* v, E* f, const char* field, const char* op) {
  const int64_t i = packed_integer(*v, field, op);
  TORCH_CHECK_VALUE(i >= 0 && i < geopref::enum_info<E>::count, "geopref.", op,
                    ": options field ", field, " must be an index in [0, ",
                    geopref::enum_info<E>::count, "), got ", i);
  *f = static_cast<E>(i);
}
template <class T, std::size_t N>
void from_packed(const double* v, T (*f)[N], const char* field, const char* op) {
  for (std::size_t k = 0; k < N; ++k) from_packed(v + k, &(*f)[k], field, op);
}

/// The operators' options list as the library's struct, one conversion per
/// field of GEOPREF_OPTIONS_FIELDS in its order, validated here (the library
/// validates again; checking here gives the error before any tensor is
/// converted or any work is enqueued).
inline geopref::options to_options(c10::ArrayRef<double> v, const char* op) {
  TORCH_CHECK_VALUE(v.size() == OPTIONS_WIDTH, "geopref.", op, ": options must hold ",
                    OPTIONS_WIDTH, " values (the fields of GEOPREF_OPTIONS_FIELDS in order), got ",
                    v.size());
  geopref::options o;
  std::size_t k = 0;
#define GEOPREF_X(P, kind, type, name, c_name, def, flag, doc) \
  from_packed(v.data() + k, &o.P name, #name, op);            \
  k += packed_width<geopref::field_t<type>>();
  GEOPREF_OPTIONS_FIELDS(GEOPREF_X)
#undef GEOPREF_X
  check_status(static_cast<int>(geopref::validate(o)), op);
  return o;
}

// The other way (options_fields()'s defaults): a field's value(s) appended.
inline void to_packed(double f, std::vector<double>* v) { v->push_back(f); }
inline void to_packed(bool f, std::vector<double>* v) { v->push_back(f ? 1.0 : 0.0); }
inline void to_packed(int64_t f, std::vector<double>* v) { v->push_back(static_cast<double>(f)); }
inline void to_packed(int f, std::vector<double>* v) { v->push_back(f); }
template <class E, std::enable_if_t<std::is_enum_v<E>, int> = 0>
void to_packed(E f, std::vector<double>* v) {
  v->push_back(static_cast<int>(f));
}
template <class T, std::size_t N>
void to_packed(const T (&f)[N], std::vector<double>* v) {
  for (std::size_t k = 0; k < N; ++k) to_packed(f[k], v);
}
inline std::vector<double> pack_options(const geopref::options& o) {
  std::vector<double> v;
#define GEOPREF_X(P, kind, type, name, c_name, def, flag, doc) to_packed(o.P name, &v);
  GEOPREF_OPTIONS_FIELDS(GEOPREF_X)
#undef GEOPREF_X
  return v;
}

// The names an enum field takes ("" for the others), comma-separated.
template <class T>
std::string field_choices(const T*) {
  if constexpr (std::is_enum_v<T>) {
    std::string s;
    for (int i = 0; i < geopref::enum_info<T>::count; ++i)
      s += std::string(i ? "," : "") + geopref::enum_info<T>::name(static_cast<T>(i));
    return s;
  } else if constexpr (std::is_array_v<T>) {
    return field_choices(static_cast<const std::remove_extent_t<T>*>(nullptr));
  } else {
    return "";
  }
}

// The logit transform crosses the operators' schemas as one `float[]
// logit_transform`: the values of GEOPREF_LOGIT_TRANSFORM_FIELDS in the list's
// order (geopref_torch builds it from its keywords, which it reads from
// logit_transform_fields() below). A list, not one schema argument per field,
// so that a field added to the list changes no schema and no backward.
#define GEOPREF_X(type, name, def, flag, doc) \
  static_assert(std::is_same_v<type, double>, "the schema passes floats: " #name);
GEOPREF_LOGIT_TRANSFORM_FIELDS(GEOPREF_X)
#undef GEOPREF_X
#define GEOPREF_X(type, name, def, flag, doc) +1
inline constexpr std::size_t LOGIT_TRANSFORM_FIELDS = 0 GEOPREF_LOGIT_TRANSFORM_FIELDS(GEOPREF_X);
#undef GEOPREF_X

/// A field's Python keyword: its CLI flag with '_' for '-' ("logit-scale" -> logit_scale).
inline std::string transform_keyword(const char* flag) {
  std::string k(flag);
  for (char& c : k)
    if (c == '-') c = '_';
  return k;
}

/// The operators' logit_transform list as the library's struct, validated here
/// (as to_options validates the options) so that a bad value is a ValueError
/// naming the values before any tensor is touched.
inline geopref::logit_transform to_logit_transform(c10::ArrayRef<double> v, const char* op) {
  TORCH_CHECK_VALUE(v.size() == LOGIT_TRANSFORM_FIELDS, "geopref.", op, ": logit_transform must "
                    "hold ", LOGIT_TRANSFORM_FIELDS, " values (the fields of geopref::logit_transform "
                    "in order), got ", v.size());
  geopref::logit_transform t;
  std::string given;
  std::size_t k = 0;
#define GEOPREF_X(type, name, def, flag, doc)                                      \
  t.name = v[k++];                                                               \
  given += (given.empty() ? "" : ", ") + transform_keyword(flag) + "=" + c10::str(t.name);
  GEOPREF_LOGIT_TRANSFORM_FIELDS(GEOPREF_X)
#undef GEOPREF_X
  const geopref::status st = geopref::validate(t);
  TORCH_CHECK_VALUE(st == geopref::status::success, "geopref.", op, ": ",
                    geopref::status_string(st), " (got ", given, ")");
  return t;
}

/// `x` [rows, cols] with rows of unit stride and a row stride >= cols (a
/// copy only when the given layout is not already so).
inline Tensor unit_rows(const Tensor& x) {
  const bool rows_ok = x.size(1) <= 1 || x.stride(1) == 1;
  const bool ld_ok = x.size(0) <= 1 || x.stride(0) >= x.size(1);
  return rows_ok && ld_ok ? x : x.contiguous();
}

/// Labels [N] of int32 or int64 (N = n_rows, the rows of the logits or hidden states).
inline void check_labels(const Tensor& labels, int64_t n_rows, const char* op) {
  TORCH_CHECK_VALUE(labels.dim() == 1 && labels.size(0) == n_rows, "geopref.", op,
                    ": labels must be [N] = [", n_rows, "], got ", labels.sizes());
  TORCH_CHECK_TYPE(labels.scalar_type() == at::kInt || labels.scalar_type() == at::kLong,
                   "geopref.", op, ": labels must be int32 or int64, got ", labels.scalar_type());
}

/// Offsets [S + 1] of int32 or int64.
inline void check_offsets(const Tensor& offsets, const char* op) {
  TORCH_CHECK_VALUE(offsets.dim() == 1 && offsets.size(0) >= 1, "geopref.", op,
                    ": offsets must be [S + 1] with S >= 0, got ", offsets.sizes());
  TORCH_CHECK_TYPE(offsets.scalar_type() == at::kInt || offsets.scalar_type() == at::kLong,
                   "geopref.", op, ": offsets must be int32 or int64, got ", offsets.scalar_type());
}

/// Logits [N, V] and labels [N] of the per-token primitive (no offsets):
/// shapes, devices, label dtype. Returns the logits through unit_rows.
inline Tensor check_rows(const Tensor& logits, const Tensor& labels, const char* op) {
  TORCH_CHECK_VALUE(logits.dim() == 2, "geopref.", op, ": logits must be 2-D [N, V], got ",
                    logits.sizes());
  check_labels(labels, logits.size(0), op);
  TORCH_CHECK_VALUE(labels.device() == logits.device(), "geopref.", op,
                    ": logits and labels must be on one device");
  return unit_rows(logits);
}

/// Logits, labels and offsets: shapes and devices (dtypes are the kernels'
/// business). Returns the logits as check_rows does.
inline Tensor check_tokens(const Tensor& logits, const Tensor& labels, const Tensor& offsets,
                           const char* op) {
  const Tensor z = check_rows(logits, labels, op);
  check_offsets(offsets, op);
  TORCH_CHECK_VALUE(offsets.device() == logits.device(), "geopref.", op,
                    ": logits, labels and offsets must be on one device");
  return z;
}

/// The row stride to pass the library.
inline int64_t row_stride(const Tensor& logits) {
  return logits.size(0) > 1 ? logits.stride(0) : logits.size(1);
}

/// An optional per-pair / per-sequence float input: shape [n], on the logits'
/// device, as a contiguous tensor of `dtype` (an undefined tensor if absent).
inline Tensor optional_vector(const c10::optional<Tensor>& t, int64_t n, const Tensor& logits,
                              at::ScalarType dtype, const char* what, const char* op) {
  if (!t.has_value() || !t->defined()) return Tensor();
  TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == n, "geopref.", op, ": ", what,
                    " must have shape [", n, "], got ", t->sizes());
  TORCH_CHECK_VALUE(t->device() == logits.device(), "geopref.", op, ": ", what,
                    " must be on the logits' device");
  TORCH_CHECK_TYPE(at::isFloatingType(t->scalar_type()), "geopref.", op, ": ", what,
                   " must be a floating-point tensor, got ", t->scalar_type());
  return t->to(dtype).contiguous();
}

/// Pairs as contiguous int64 [P, 2], or undefined (TRL's concatenated layout).
inline Tensor optional_pairs(const c10::optional<Tensor>& t, const Tensor& logits, const char* op) {
  if (!t.has_value() || !t->defined()) return Tensor();
  TORCH_CHECK_VALUE(t->dim() == 2 && t->size(1) == 2, "geopref.", op,
                    ": pairs must be [P, 2], got ", t->sizes());
  TORCH_CHECK_VALUE(t->device() == logits.device(), "geopref.", op,
                    ": pairs must be on the logits' device");
  TORCH_CHECK_TYPE(t->scalar_type() == at::kInt || t->scalar_type() == at::kLong, "geopref.", op,
                   ": pairs must be int32 or int64, got ", t->scalar_type());
  return t->to(at::kLong).contiguous();
}

/// P: the rows of pairs, or S / 2 for the concatenated layout.
inline int64_t pair_count(const Tensor& pairs, int64_t n_seqs) {
  return pairs.defined() ? pairs.size(0) : n_seqs / 2;
}

/// The upstream gradient of a step's loss, or null: [] ([P] per pair for
/// reduction "none"), on the device of `like` (`where` names it), as
/// contiguous `dtype` [1] or [P]; undefined for null.
inline Tensor upstream_of(const Tensor* upstream, const geopref::options& opt, int64_t n_pairs,
                          const Tensor& like, at::ScalarType dtype, const char* where,
                          const char* op) {
  if (upstream == nullptr) return Tensor();
  const int64_t n_up = opt.reduce == geopref::reduction::none ? n_pairs : 1;
  TORCH_CHECK_VALUE(upstream->numel() == n_up && upstream->device() == like.device(), "geopref.",
                    op, ": grad_output must hold ", n_up, " value(s) on ", where, ", got ",
                    upstream->sizes());
  return upstream->to(dtype).contiguous().reshape({-1});
}

/// grad_output, when given (the optional upstream of a step's schema), or null.
inline const Tensor* given(const c10::optional<Tensor>& t) {
  return t.has_value() && t->defined() ? &*t : nullptr;
}

/// The data of an optional float tensor of element type F, or null.
template <class F>
const F* data_or_null(const Tensor& t) {
  return t.defined() ? t.data_ptr<F>() : nullptr;
}

/// pref_loss's per-pair tensors and the per-token weights as a kernel takes
/// them: pairs int64 [P, 2], the floats in `dtype` (double for the CPU
/// reference, float32 for the C ABI); the optional ones undefined.
struct pair_tensors {
  Tensor pairs, soft, ref_logps, weights, token_weights;
  int64_t n_pairs;
  pair_tensors(const Tensor& like, int64_t n_seqs, const c10::optional<Tensor>& p,
               const c10::optional<Tensor>& s, const c10::optional<Tensor>& r,
               const c10::optional<Tensor>& w, const c10::optional<Tensor>& tw,
               at::ScalarType dtype, const char* op)
      : pairs(optional_pairs(p, like, op)), n_pairs(pair_count(pairs, n_seqs)) {
    soft = optional_vector(s, n_pairs, like, dtype, "soft_labels", op);
    ref_logps = optional_vector(r, n_seqs, like, dtype, "ref_logps", op);
    weights = optional_vector(w, n_pairs, like, dtype, "weights", op);
    token_weights = optional_vector(tw, like.size(0), like, dtype, "token_weights", op);
  }
  /// Points the pair fields of `a` (the reference's inputs or a C ABI
  /// argument struct) and its token-weight field `tw` at the tensors.
  template <class Args, class F>
  void fill(Args& a, const F*& tw) const {
    a.n_pairs = n_pairs;
    a.pairs = pairs.defined() ? pairs.data_ptr<int64_t>() : nullptr;
    a.soft_labels = data_or_null<F>(soft);
    a.ref_logps = data_or_null<F>(ref_logps);
    a.weights = data_or_null<F>(weights);
    tw = data_or_null<F>(token_weights);
  }
};

// The arguments of pref_loss and pref_loss_grad_seq after grad_output, in
// the schema's order (ops.cpp, GEOPREF_PREF_LOSS_ARGS), for their CPU and
// CUDA kernels.
#define GEOPREF_PREF_LOSS_PARAMS                                                            \
  const Tensor &logits, const Tensor &labels, const Tensor &offsets,                        \
      const c10::optional<Tensor> &pairs, const c10::optional<Tensor> &soft_labels,         \
      const c10::optional<Tensor> &ref_logps, const c10::optional<Tensor> &weights,         \
      const c10::optional<Tensor> &token_weights, c10::ArrayRef<double> options, bool check, \
      c10::ArrayRef<double> logit_transform

// The operators over logits (schemas: ops.cpp), each with a CPU kernel
// <op>_cpu (ops.cpp) and a CUDA kernel <op>_cuda (ops_cuda.cpp).
#define GEOPREF_TORCH_LOGITS_OPS(X) \
  X(pref_loss) X(pref_loss_grad_seq) X(sequence_logps) X(logits_grad) X(token_logps) \
  X(token_logps_grad)

// The registration of a list's kernels, inside TORCH_LIBRARY_IMPL(geopref, CPU / CUDA, m).
#define GEOPREF_TORCH_CPU_IMPL(op) m.impl(#op, &geopref_torch::op##_cpu);
#define GEOPREF_TORCH_CUDA_IMPL(op) m.impl(#op, &geopref_torch::op##_cuda);

/// The values of a metric_sums tensor: geopref::metric_sums' fields (the
/// seven metrics as sums, then the pair count P).
inline constexpr int64_t METRIC_SUMS = 8;

/// Float outputs are float32, float64 for float64 logits (CPU only).
inline at::ScalarType out_dtype(const Tensor& logits) {
  return logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

/// The per-token primitive's optional outputs (token_logps and
/// linear_token_logps; TRL 1.x's per-token statistics and the entropy): each
/// [N] when asked for, else [0]; the floats in `dtype` (the kernel's: double
/// for the CPU reference, float32 for the C ABI), is_top1 bool (the
/// library's uint8 0/1, written in place: the same byte).
struct token_stats {
  bool want[4];  // entropy, log_sum_sq_probs, mean_logits, is_top1
  Tensor entropy, log_sum_sq_probs, mean_logits, is_top1;
  token_stats(int64_t n, const Tensor& like, at::ScalarType dtype, bool e, bool l, bool m, bool t)
      : want{e, l, m, t} {
    const auto f = like.options().dtype(dtype);
    entropy = at::empty({e ? n : 0}, f);
    log_sum_sq_probs = at::empty({l ? n : 0}, f);
    mean_logits = at::empty({m ? n : 0}, f);
    is_top1 = at::empty({t ? n : 0}, like.options().dtype(at::kBool));
  }
  /// Points the outputs asked for of `out` (the reference's token_outputs or
  /// a C ABI argument struct) at the tensors; the others stay null.
  template <class Out>
  void fill(Out& out) const {
    using F = std::remove_pointer_t<decltype(out.entropy)>;
    out.entropy = want[0] ? entropy.data_ptr<F>() : nullptr;
    out.log_sum_sq_probs = want[1] ? log_sum_sq_probs.data_ptr<F>() : nullptr;
    out.mean_logits = want[2] ? mean_logits.data_ptr<F>() : nullptr;
    static_assert(sizeof(bool) == 1, "is_top1 is written as bytes");
    out.is_top1 = want[3] ? reinterpret_cast<uint8_t*>(is_top1.data_ptr<bool>()) : nullptr;
  }
  /// (entropy, log_sum_sq_probs, mean_logits, is_top1), the floats as `od`.
  std::tuple<Tensor, Tensor, Tensor, Tensor> result(at::ScalarType od) const {
    return {entropy.to(od), log_sum_sq_probs.to(od), mean_logits.to(od), is_top1};
  }
};

/// The entropy's upstream gradient e_t = dLoss/dH_t and the forward's entropy
/// H_t of the per-token backward (token_logps_grad, linear_token_logps_grad):
/// both [N] on the device of `like`, as contiguous `dtype`, or both undefined
/// (no entropy upstream). grad_entropy needs the entropy (the C ABI reads it;
/// the CPU reference recomputes it but the operators take the same inputs on
/// every device); an entropy alone is ignored.
inline std::pair<Tensor, Tensor> entropy_upstream(const c10::optional<Tensor>& grad_entropy,
                                                  const c10::optional<Tensor>& entropy, int64_t n,
                                                  const Tensor& like, at::ScalarType dtype,
                                                  const char* op) {
  const Tensor e = optional_vector(grad_entropy, n, like, dtype, "grad_entropy", op);
  if (!e.defined()) return {};
  const Tensor h = optional_vector(entropy, n, like, dtype, "entropy", op);
  TORCH_CHECK_VALUE(h.defined(), "geopref.", op,
                    ": grad_entropy needs the forward's entropy (entropy=...), got none");
  return {e, h};
}

/// d seq_logps / d L_s: 1, or 1/n_s (0 for n_s = 0) when the margin uses
/// length-normalised log-probs (the options ask for it, or the loss forces
/// it), from the per-sequence counts n_s. Runs on the counts' device.
inline Tensor seq_scale(const Tensor& counts, const geopref::options& opt, at::ScalarType dtype) {
  if (!geopref::uses_average_logps(opt)) return at::ones(counts.sizes(), counts.options().dtype(dtype));
  const Tensor n = counts.to(at::kDouble);
  return at::where(n > 0, 1.0 / n.clamp_min(1.0), at::zeros_like(n)).to(dtype);
}

}  // namespace geopref_torch
