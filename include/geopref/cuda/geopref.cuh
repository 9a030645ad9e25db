// geopref/cuda/geopref.cuh — the CUDA launch API.
//
// Three entry points, all in CUB's shape (cub::DeviceReduce::Sum):
//
//   sequence_logps  the forward pass alone: per-sequence log-probs of a model,
//                   used for the reference model (its output is the ref_logps
//                   input of train_step);
//   train_step      forward, pair loss and backward of the policy model in one
//                   call: the loss, TRL-style metrics, per-sequence log-probs
//                   and the gradient with respect to the logits;
//   logits_grad     the backward pass alone, from the lse and grad_seq_logps
//                   of a train_step run without a gradient (an autograd
//                   forward/backward split): one more read of the logits and
//                   one write of the gradient, the floor of
//                   docs/benchmarks.md, "Bytes moved".
//
// Calling convention (every entry):
//   1. call with workspace == nullptr: only workspace_bytes is set (arguments
//      that determine the size are checked, buffers are not);
//   2. allocate that many bytes (any alignment: the library rounds the base
//      up inside the bytes it asked for) and call again with the same
//      arguments. The size depends only on N, V, the logits dtype, S and P.
//   Every entry is (workspace, workspace_bytes, args, [options,] stream): one
//   argument struct, built from the blocks of geopref/cuda/args.cuh (each
//   field declared once; docs/architecture.md, "Argument blocks"), holding
//   only what the entry reads.
//   Everything is enqueued on `stream`; the call returns without waiting.
//   The library never allocates, synchronises (except device_status), throws,
//   exits or prints.
//
// Errors:
//   * Everything the host can check (sizes, strides, null pointers, loss and
//     reduction parameters, buffer overlap, alignment) is returned at once as a
//     geopref::status and nothing is enqueued. Overlap includes the logits,
//     the gradient (and logits_grad's lse and g_s) meeting the workspace:
//     overlapping_buffers.
//   * A failed CUDA call or launch is status::cuda_error; the library only
//     peeks at the runtime's last error, so cudaGetLastError() then gives the
//     code. An error the caller left pending is reported the same way.
//   * Problems in device data (a label outside [0, V) that is not ignore_index,
//     bad offsets, a pair index outside [0, S), p̂ outside [0, 1] or NaN, a
//     negative/NaN/inf weight, a NaN or +inf reference log-prob, a NaN/inf
//     upstream gradient) are found by the kernels without any out-of-bounds
//     access: the offending item is treated as harmless (a bad label as an
//     unscored row, a bad pair index as an empty sequence, ...) and a flag is
//     recorded in the workspace. Call device_status() (it synchronises the
//     stream) to read it. When it is not success, the outputs of that call are
//     unspecified (but every write stayed inside the output buffers).
//     The flag is reset by the next call that uses the same workspace; when
//     several problems exist, the smallest status code among them is reported.
//
// Determinism: no floating-point atomics; every reduction has a fixed order,
// and rows are cut into splits by their length alone (never by the device's
// SM count), so the same inputs give bitwise-identical outputs run after run
// and on any card of the same architecture.
//
// Buffers are device pointers unless stated. Float inputs that are not logits
// (soft labels, reference log-probs, weights, upstream gradients) are float32;
// pair-level arithmetic runs in double on the device.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "geopref/cuda/args.cuh"  // dtype, index_type, token_inputs, logps_args, train_args,
                                  // grad_args
#include "geopref/losses.hpp"
#include "geopref/options.hpp"
#include "geopref/status.hpp"

namespace geopref::cuda {

/// Forward pass only: per-sequence log-probs (L or L̄ by `opt`) for the
/// reference model. Uses opt.ignore_index and uses_average_logps(opt); the
/// whole of `opt` is validated.
inline status sequence_logps(void* workspace, size_t& workspace_bytes, const logps_args& args,
                             const options& opt, cudaStream_t stream = nullptr) noexcept;

/// One training step: forward, per-sequence sums, pair loss (opt.loss,
/// opt.reduce), metrics and, when args.grad_logits is set, the backward pass.
inline status train_step(void* workspace, size_t& workspace_bytes, const train_args& args,
                         const options& opt, cudaStream_t stream = nullptr) noexcept;

/// The same with a caller's own margin loss: any copyable type with
///   __host__ __device__ double value(double h, double p) const;
///   __host__ __device__ double derivative(double h, double p) const;
/// (the shape of the built-in functors in geopref/losses.hpp; wrap it in
/// geopref::geometric<> for its soft-label form). It replaces the loss of
/// every margin term of opt.loss; opt.loss.type still says whether
/// log-probs are averaged and whether a reference is allowed, and the other
/// terms of a combination (sft, ...) stay as they are. Each Loss type
/// instantiates the (small) pair kernel once; the forward and backward
/// kernels are shared. The CPU reference's compute_with_loss is its check.
template <class Loss, class = std::enable_if_t<is_margin_loss_v<Loss>>>
inline status train_step(void* workspace, size_t& workspace_bytes, const train_args& args,
                         const options& opt, const Loss& loss,
                         cudaStream_t stream = nullptr) noexcept;

/// Backward pass alone: the gradient train_step would write, from its lse and
/// grad_seq_logps outputs (see grad_args). Reads opt.ignore_index alone (the
/// options of the train_step, so that the same rows are scored); the rest of
/// `opt` is neither read nor validated. Device-side label and offset errors
/// are recorded as in train_step.
inline status logits_grad(void* workspace, size_t& workspace_bytes, const grad_args& args,
                          const options& opt, cudaStream_t stream = nullptr) noexcept;

/// Reads the device-side status recorded by the last call that used
/// `workspace` (label out of range, bad offsets, ...). Synchronises `stream`.
/// Returns cuda_error if that fails, null_pointer for null arguments, else
/// success with the recorded status in *result.
inline status device_status(const void* workspace, cudaStream_t stream, status* result) noexcept;

}  // namespace geopref::cuda

#include "geopref/cuda/detail/api.cuh"
// The per-token primitive (token_logps, token_logps_grad).
#include "geopref/cuda/token_logps.cuh"
