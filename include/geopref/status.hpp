// geopref/status.hpp — the one status type every entry point returns.
//
// The library never throws, exits or prints: every rejected input maps to one
// of these codes, and status_string() gives a one-line message for it.
#pragma once

namespace geopref {

enum class status : int {
  success = 0,
  // shapes and layout
  invalid_shape,          // N, V, S or P negative, V == 0 with scored rows, ...
  invalid_stride,         // row stride ld < V
  null_pointer,           // a required buffer is null while its size is non-zero
  label_out_of_range,     // a label is neither ignore_index nor in [0, V)
  invalid_offsets,        // offsets[0] != 0, not non-decreasing, or past N
  pair_count_mismatch,    // default pairing needs S == 2P
  pair_index_out_of_range,// an explicit pair index is not in [0, S)
  soft_label_out_of_range,// p̂ outside [0, 1] or NaN
  invalid_weight,         // a per-pair weight is negative, NaN or infinite; a per-token weight NaN or infinite
  invalid_reference,      // a reference log-prob is NaN or +inf
  // loss configuration
  invalid_loss,           // unknown loss type
  invalid_beta,           // β not finite and > 0
  invalid_epsilon,        // ε outside the loss's range
  invalid_alpha_gamma,    // α or γ negative or not finite
  invalid_tau,            // τ not finite and > 0
  reference_not_allowed,  // simpo is reference-free by definition
  invalid_reduction,      // unknown reduction, or a caller normaliser <= 0 / NaN
  invalid_upstream_grad,  // upstream gradient NaN or infinite
  invalid_loss_option,    // a bad combination, transform, term weight or bco δ; the geometric form of a loss without a margin
  invalid_vocab_records,  // vocab-parallel: a slice outside [0, V), or gathered records where a rank is
                          // missing or repeated, or a scored row's label is owned by no slice or by two
  // execution
  workspace_too_small,    // the workspace passed is smaller than asked for
  misaligned_pointer,     // a buffer violates the alignment it was declared with
  overlapping_buffers,    // the gradient overlaps the logits (exactly in place excepted), the
                          // lse or g_s it reads; or logits, gradient, lse, g_s overlap the workspace
  unsupported_dtype,      // dtype not compiled in
  cuda_error,             // a CUDA runtime call failed; cudaGetLastError() gives its code
  host_layout_mismatch,   // fused linear: the host copies of offsets / pairs (host_offsets,
                          // host_pairs) differ from the device arrays (recorded on the device)
  invalid_logit_transform,// the logit transform: scale not finite and > 0, softcap negative or not
                          // finite, temperature not finite and > 0
  invalid_struct_size,    // C ABI: an argument struct's struct_size is below its ABI 1.0 size, between
                          // two released layouts, or past the library's layout with non-zero bytes
  internal_error,
};

/// One line describing a status, suitable for an error message.
inline const char* status_string(status s) noexcept {
  switch (s) {
    case status::success: return "success";
    case status::invalid_shape: return "invalid shape: a size is negative or the buffers disagree";
    case status::invalid_stride: return "invalid stride: logits row stride ld must be >= V";
    case status::null_pointer: return "null pointer: a required buffer is missing";
    case status::label_out_of_range: return "label out of range: a label is neither ignore_index nor in [0, V)";
    case status::invalid_offsets: return "invalid offsets: offsets must start at 0, be non-decreasing and end at most at N";
    case status::pair_count_mismatch: return "pair count mismatch: default pairing needs S == 2P sequences";
    case status::pair_index_out_of_range: return "pair index out of range: a pair names a sequence outside [0, S)";
    case status::soft_label_out_of_range: return "soft label out of range: p must be in [0, 1] and not NaN";
    case status::invalid_weight: return "invalid weight: per-pair weights must be finite and >= 0, per-token weights finite";
    case status::invalid_reference: return "invalid reference log-prob: must not be NaN or +inf";
    case status::invalid_loss: return "invalid loss: unknown loss type";
    case status::invalid_beta: return "invalid beta: beta must be finite and > 0";
    case status::invalid_epsilon: return "invalid epsilon: outside the range this loss accepts";
    case status::invalid_alpha_gamma: return "invalid alpha/gamma: must be finite and >= 0";
    case status::invalid_tau: return "invalid tau: tau must be finite and > 0";
    case status::reference_not_allowed: return "reference not allowed: every loss term is reference-free (simpo, orpo, sft)";
    case status::invalid_reduction: return "invalid reduction: unknown reduction or normaliser not finite and > 0";
    case status::invalid_upstream_grad: return "invalid upstream gradient: must be finite";
    case status::invalid_loss_option: return "invalid loss option: bad term count or weight, transform, f_alpha or bco delta, or --geometric on a loss without a margin";
    case status::invalid_vocab_records: return "invalid vocab-parallel records: a slice outside [0, V), a rank missing or repeated in a row's records, or a scored label owned by no slice or by two";
    case status::workspace_too_small: return "workspace too small: query the size with a null workspace first";
    case status::misaligned_pointer: return "misaligned pointer";
    case status::overlapping_buffers: return "overlapping buffers: the gradient overlaps the logits, lse or g_s, or a logits/gradient/lse/g_s buffer overlaps the workspace (only an exact in-place gradient is allowed)";
    case status::unsupported_dtype: return "unsupported dtype";
    case status::cuda_error: return "CUDA runtime error";
    case status::host_layout_mismatch: return "host layout mismatch: host_offsets / host_pairs differ from the device offsets / pairs";
    case status::invalid_logit_transform: return "invalid logit transform: logit_scale and temperature must be finite and > 0, softcap finite and >= 0 (0: no cap)";
    case status::invalid_struct_size: return "invalid struct size: struct_size is not the size of a released layout of this struct (set it with its geopref_*_init), or the bytes past the layout this library knows are not zero";
    case status::internal_error: return "internal error";
  }
  return "unknown status";
}

}  // namespace geopref
