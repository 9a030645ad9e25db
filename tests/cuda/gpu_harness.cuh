// tests/cuda/gpu_harness.cuh — building seeded random problems, running them
// through geopref::cuda and the CPU reference, and comparing every output
// with a per-element error bound.
//
// Error model (why the tolerances are what they are). The GPU reads the same
// rounded logits as the reference, so input rounding never counts; what
// counts is the kernels' fp32 arithmetic and the rounding of the outputs.
// u = 2⁻²⁴ is fp32's unit roundoff.
//   * Σ exp: the kernels work in base 2 (arith.cuh): each term is
//     ex2(fma(z, log₂e, −m)) with an integer m ≥ max z·log₂e. Each thread adds
//     about V/256 terms sequentially (error ≤ V/256·u relative); each term
//     carries ≤ ~3u (ex2.approx is 2 ulp, plus the one rounding of the FFMA,
//     whose effect 2^t·|t|·ln2·u is below u/e); rescales are exact powers of
//     two; ~13 merges of the block tree and the splits add one rounding each.
//     Bound: eps_sum(V) = 2 (V/128 + 128) u, a worst case, well above the
//     typical (it was set for the former base-e code, which had more error:
//     a rounded rescale per vector).
//   * lse_t = (m + log₂ s)·ln 2: eps_sum + 2u|lse_t| (the sum and the product
//     round once each; log₂ s ≤ log₂ V is absorbed by eps_sum's 256u floor).
//     ℓ_t = z_y − lse_t adds 2u(|ℓ_t| + |z_y|).
//   * L_s: the sum over its rows of the ℓ_t bounds (in double on the GPU), then
//     ÷ n_s when averaged; + 2u|L_s| for the float output.
//   * Pair values: the margin error e_h = err(L_a) + err(L_b) propagates
//     through f with the largest |f'| on [h − e_h, h + e_h], and through f'
//     with the largest change of f' there (this covers hinge's kink too);
//     pair math itself is double. Float outputs add 2u relative.
//   * grad[t, v] = g (𝟙 − p), p = 2^fma(z, log₂e, −rn(lse·log₂e)): the
//     pre-scaled lse rounds once (u|lse| relative in p, inside err(lse_t)'s
//     2u|lse_t|), the FFMA once (≤ u|z − lse|), ex2 2 ulp, so
//     |g| p (err(lse_t) + (2|z − lse| + 6) u) + err(g) |𝟙 − p| + 3u|grad|
//     covers it; the label column's −g·expm1(z_y − lse) errs less. Then the output
//     rounding: u_out |grad| with u_out = 2⁻¹¹ (half), 2⁻⁸ (bfloat16: 8
//     significant bits), 0 (float, already counted), plus half's subnormal
//     spacing 2⁻²⁵ as an absolute floor.
#pragma once

#include <catch2/catch.hpp>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#if defined(GEOPREF_HOST_EMULATION)
#include <sys/mman.h>
#endif

#include "geopref/cuda/geopref.cuh"
#include "device_buffer.hpp"
#include "reference_bridge.hpp"
#include "user_loss.hpp"

namespace geopref::test {

namespace gc = geopref::cuda;
using support::ref_dtype;
using support::ref_problem;
using support::ref_result;
using support::run_reference;
using support::run_pair_step;
using support::log_cosh_loss;
using geopref::options;
using geopref::status;

inline constexpr double U32 = 5.9604644775390625e-08;  // 2^-24

#define CUDA_REQUIRE(x) REQUIRE((x) == cudaSuccess)

// ---------------------------------------------------------------------------
// Device memory that frees itself: the shared buffer, its allocation REQUIREd.
struct dmem : geopref::support::device_buffer {
  dmem() = default;
  explicit dmem(size_t b) : device_buffer(b) { CUDA_REQUIRE(error()); }
  explicit dmem(device_buffer&& b) : device_buffer(std::move(b)) { CUDA_REQUIRE(error()); }
};

template <class T>
dmem upload(const std::vector<T>& v) {
  return dmem(geopref::support::device_buffer::upload(v));
}

template <class T>
std::vector<T> download(const void* p, size_t n) {
  std::vector<T> v(n);
  if (n > 0) CUDA_REQUIRE(cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
  return v;
}

#if defined(GEOPREF_HOST_EMULATION)
/// A reserved, untouched anonymous mapping: pages cost memory only once
/// written (the emulator's kernels read host memory: rows 2³² elements apart).
struct sparse_mapping {
  uint8_t* ptr = nullptr;
  size_t bytes = 0;
  explicit sparse_mapping(size_t b) : bytes(b) {
    void* p = mmap(nullptr, b, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p != MAP_FAILED) ptr = static_cast<uint8_t*>(p);
  }
  ~sparse_mapping() {
    if (ptr != nullptr) munmap(ptr, bytes);
  }
  sparse_mapping(const sparse_mapping&) = delete;
  sparse_mapping& operator=(const sparse_mapping&) = delete;
};
#endif

/// A two-phase entry run once: the size query (null workspace), then the call
/// on a workspace of exactly the bytes asked for; both REQUIREd to succeed.
/// Returns the workspace (for device_status_of). GEOPREF_RUN(gc::entry,
/// args...) calls gc::entry(workspace, bytes, args...).
template <class Call>
dmem run_two_phase(Call&& call) {
  size_t bytes = 0;
  REQUIRE(call(nullptr, bytes) == status::success);
  dmem ws(bytes);
  REQUIRE(call(ws.get(), bytes) == status::success);
  return ws;
}
#define GEOPREF_RUN(entry, ...)  \
  ::geopref::test::run_two_phase( \
      [&](void* ws_, size_t& bytes_) { return entry(ws_, bytes_, __VA_ARGS__); })

/// What the device recorded in a workspace (device_status REQUIREd to answer).
inline status device_status_of(const void* ws, cudaStream_t stream = nullptr) {
  status dev = status::internal_error;
  REQUIRE(geopref::cuda::device_status(ws, stream, &dev) == status::success);
  return dev;
}
inline status device_status_of(const dmem& ws, cudaStream_t stream = nullptr) {
  return device_status_of(ws.get(), stream);
}

// ---------------------------------------------------------------------------
// Element encoding. Logits live on the host as raw bytes of their dtype and
// as the float values those bytes mean.
inline int dtype_bytes(gc::dtype d) { return d == gc::dtype::float32 ? 4 : 2; }

inline ref_dtype to_ref(gc::dtype d) {
  return d == gc::dtype::float32 ? ref_dtype::f32
                                 : (d == gc::dtype::float16 ? ref_dtype::f16 : ref_dtype::bf16);
}

/// Rounds x to the dtype and returns the value and its bit pattern.
inline float encode(gc::dtype d, float x, uint8_t* out) {
  if (d == gc::dtype::float32) {
    std::memcpy(out, &x, 4);
    return x;
  }
  if (d == gc::dtype::float16) {
    const __half h = __float2half_rn(x);
    std::memcpy(out, &h, 2);
    return __half2float(h);
  }
  const __nv_bfloat16 b = __float2bfloat16_rn(x);
  std::memcpy(out, &b, 2);
  return __bfloat162float(b);
}

inline double decode(gc::dtype d, const uint8_t* in) {
  if (d == gc::dtype::float32) {
    float x;
    std::memcpy(&x, in, 4);
    return x;
  }
  if (d == gc::dtype::float16) {
    __half h;
    std::memcpy(&h, in, 2);
    return __half2float(h);
  }
  __nv_bfloat16 b;
  std::memcpy(&b, in, 2);
  return __bfloat162float(b);
}

inline const char* dtype_name(gc::dtype d) {
  return d == gc::dtype::float32 ? "float32" : (d == gc::dtype::float16 ? "float16" : "bfloat16");
}

// ---------------------------------------------------------------------------
// One test problem.
struct case_config {
  gc::dtype dtype = gc::dtype::float32;
  gc::index_type label_type = gc::index_type::int64;
  gc::index_type offset_type = gc::index_type::int64;
  int64_t vocab = 257;
  int64_t pad = 0;                    // ld = V + pad
  int64_t misalign = 0;               // logits start this many elements past an aligned address
  std::vector<int64_t> seq_lens = {5, 7, 6, 4};  // S = seq_lens.size()
  int64_t extra_rows = 0;             // rows after offsets[S], in no sequence
  double mask_prob = 0.2;             // probability that a row's label is ignore_index
  std::vector<int64_t> masked_seqs;   // sequences with every row ignore_index
  int64_t explicit_pairs = -1;        // >= 0: that many random (a, b) pairs; else TRL layout
  bool soft = true, ref = true, weights = false, grad_output = false;
  bool token_weights = false;         // per-token weights in [0.25, 1.75]
  double user_loss_beta = 0.0;        // > 0: user_loss.hpp's loss through train_step<Loss>
  double grad_loss = 1.0;
  options opt{};
  bool grad = true, grad_fp32 = false, in_place = false;
  int64_t grad_pad = 0, grad_misalign = 0;
  bool extreme = false;  // ±1e4 entries, −inf entries, rows shifted by 1e4
  double scale = 3.0;    // standard deviation of ordinary logits
  geopref::logit_transform logit_transform{};  // applied to every logit (options.hpp)
  uint64_t seed = 1;
};

inline std::string describe(const case_config& c) {
  std::ostringstream o;
  o << "seed=" << c.seed << " dtype=" << dtype_name(c.dtype)
    << " labels=" << (c.label_type == gc::index_type::int32 ? "i32" : "i64")
    << " offsets=" << (c.offset_type == gc::index_type::int32 ? "i32" : "i64") << " V=" << c.vocab
    << " pad=" << c.pad << " misalign=" << c.misalign << " S=" << c.seq_lens.size()
    << " extra_rows=" << c.extra_rows << " loss=" << geopref::loss_name(c.opt.loss.type)
    << " reduce=" << static_cast<int>(c.opt.reduce) << " avg=" << c.opt.average_logps
    << " pairs=" << c.explicit_pairs << " soft=" << c.soft << " ref=" << c.ref
    << " weights=" << c.weights << " grad_output=" << c.grad_output << " grad=" << c.grad
    << " fp32grad=" << c.grad_fp32 << " in_place=" << c.in_place << " grad_pad=" << c.grad_pad
    << " extreme=" << c.extreme << " token_weights=" << c.token_weights
    << " terms=" << c.opt.loss.n_terms << " transform=" << geopref::transform_name(c.opt.loss.transform)
    << " geometric=" << c.opt.loss.geometric << " logit_scale=" << c.logit_transform.scale
    << " softcap=" << c.logit_transform.softcap << " temperature=" << c.logit_transform.temperature;
  for (int k = 0; k < c.opt.loss.n_terms && k < geopref::MAX_LOSS_TERMS; ++k)
    o << " " << geopref::loss_name(c.opt.loss.terms[k]) << "*" << c.opt.loss.term_weights[k];
  return o.str();
}

/// The small layout most cases start from: V = 37 (a multiple of no vector
/// width), a padded ld and rows off a 16-byte boundary (the scalar prologue),
/// an empty and an all-masked sequence, rows after offsets[S], pair weights,
/// an upstream gradient of 0.75, gdpo.
inline case_config small_case(gc::dtype dt, uint64_t seed) {
  case_config c;
  c.dtype = dt;
  c.vocab = 37;
  c.pad = 3;
  c.misalign = 1;
  c.seq_lens = {5, 0, 7, 3, 4, 6};
  c.masked_seqs = {3};
  c.extra_rows = 2;
  c.weights = true;
  c.grad_output = true;
  c.grad_loss = 0.75;
  c.opt.loss.type = geopref::loss_type::gdpo;
  c.seed = seed;
  return c;
}

/// A gdpo case of `seq_lens` rows over V columns (TRL pairs); the rest as
/// case_config's defaults.
inline case_config gdpo_case(gc::dtype dt, int64_t vocab, std::vector<int64_t> seq_lens,
                             uint64_t seed) {
  case_config c;
  c.dtype = dt;
  c.vocab = vocab;
  c.seq_lens = std::move(seq_lens);
  c.opt.loss.type = geopref::loss_type::gdpo;
  c.seed = seed;
  return c;
}

/// Packed float16 sequences: empty ones, all-masked ones, rows after
/// offsets[S]; V = 777; cdpo; `pairs` as case_config::explicit_pairs.
inline case_config packed_case(int64_t pairs, uint64_t seed) {
  case_config c;
  c.dtype = gc::dtype::float16;
  c.vocab = 777;
  c.seq_lens = {0, 14, 1, 0, 23, 5, 9, 0, 2, 16};
  c.masked_seqs = {5, 8};
  c.extra_rows = 6;
  c.explicit_pairs = pairs;
  c.opt.loss.type = geopref::loss_type::cdpo;
  c.seed = seed;
  return c;
}

/// `run(c)` on a case in three gradient layouts, each with the next seed:
/// out of place in the logits dtype at grad_ld = V; in place; a float
/// gradient at a padded, misaligned stride, with int32 labels and offsets and
/// 5 explicit pairs.
template <class Run>
void for_each_grad_layout(case_config c, uint64_t& seed, Run&& run) {
  c.seed = ++seed;
  run(c);
  c.in_place = true;
  c.seed = ++seed;
  run(c);
  c.in_place = false;
  c.grad_fp32 = true;
  c.grad_pad = 5;
  c.grad_misalign = 3;
  c.label_type = gc::index_type::int32;
  c.offset_type = gc::index_type::int32;
  c.explicit_pairs = 5;
  c.seed = ++seed;
  run(c);
}

struct problem {
  case_config cfg;
  int64_t n = 0, v = 0, ld = 0, s = 0, p = 0;
  std::vector<uint8_t> logits;  // [N, ld] raw dtype bytes; columns [V, ld) hold the sentinel 7
  std::vector<float> z;         // [N, ld] their values
  std::vector<int64_t> labels, offsets, pairs;
  std::vector<float> soft, ref, weights, grad_out, tw;  // what the GPU reads
  ref_problem ref_in;                                   // points into the vectors below
  std::vector<double> soft_d, ref_d, weights_d, grad_out_d, tw_d;
};

/// Fills everything but ref_logps (set_reference does that: it needs the
/// reference's own log-probs to make realistic margins).
inline void make_problem(const case_config& c, problem& pr) {
  pr.cfg = c;
  std::mt19937_64 rng(c.seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<double> uni(0.0, 1.0);
  pr.s = static_cast<int64_t>(c.seq_lens.size());
  pr.offsets.assign(1, 0);
  for (int64_t len : c.seq_lens) pr.offsets.push_back(pr.offsets.back() + len);
  pr.n = pr.offsets.back() + c.extra_rows;
  pr.v = c.vocab;
  pr.ld = c.vocab + c.pad;
  const int64_t ignore = c.opt.ignore_index;

  auto rand_col = [&]() { return static_cast<int64_t>(rng() % static_cast<uint64_t>(pr.v)); };
  pr.labels.assign(static_cast<size_t>(pr.n), ignore);
  for (int64_t t = 0; t < pr.n; ++t)
    if (uni(rng) >= c.mask_prob) pr.labels[t] = rand_col();
  for (int64_t m : c.masked_seqs)
    for (int64_t t = pr.offsets[m]; t < pr.offsets[m + 1]; ++t) pr.labels[t] = ignore;

  const int es = dtype_bytes(c.dtype);
  pr.logits.assign(static_cast<size_t>(pr.n * pr.ld * es), 0);
  pr.z.assign(static_cast<size_t>(pr.n * pr.ld), 0.0f);
  auto set = [&](int64_t t, int64_t col, float x) {
    const size_t i = static_cast<size_t>(t * pr.ld + col);
    pr.z[i] = encode(c.dtype, x, &pr.logits[i * es]);
  };
  for (int64_t t = 0; t < pr.n; ++t) {
    const int kind = c.extreme ? static_cast<int>(rng() % 4) : 0;
    const float shift = kind == 2 ? 1e4f : 0.0f;
    for (int64_t col = 0; col < pr.v; ++col) set(t, col, static_cast<float>(shift + c.scale * normal(rng)));
    for (int64_t col = pr.v; col < pr.ld; ++col) set(t, col, 7.0f);
    if (kind == 1) {  // a few ±1e4 and −inf entries (never at the label)
      for (int q = 0; q < 3; ++q) set(t, rand_col(), (rng() & 1) ? 1e4f : -1e4f);
      for (int q = 0; q < 3; ++q) {
        const int64_t col = rand_col();
        if (col != pr.labels[t]) set(t, col, -INFINITY);
      }
    } else if (kind == 3) {  // every entry −1e4 but the label's
      for (int64_t col = 0; col < pr.v; ++col)
        if (col != pr.labels[t]) set(t, col, -1e4f);
    }
  }

  // Pairs.
  if (c.explicit_pairs >= 0) {
    pr.p = c.explicit_pairs;
    for (int64_t i = 0; i < 2 * pr.p; ++i)
      pr.pairs.push_back(static_cast<int64_t>(rng() % static_cast<uint64_t>(pr.s)));
  } else {
    pr.p = pr.s / 2;
  }
  if (c.soft) {
    for (int64_t i = 0; i < pr.p; ++i) {
      const uint64_t r = rng() % 8;
      pr.soft.push_back(r == 0 ? 0.0f : r == 1 ? 0.5f : r == 2 ? 1.0f : static_cast<float>(uni(rng)));
    }
  }
  if (c.weights)
    for (int64_t i = 0; i < pr.p; ++i)
      pr.weights.push_back(rng() % 6 == 0 ? 0.0f : static_cast<float>(2.0 * uni(rng)));
  if (c.grad_output) {
    const int64_t m = c.opt.reduce == geopref::reduction::none ? pr.p : 1;
    for (int64_t i = 0; i < m; ++i) pr.grad_out.push_back(static_cast<float>(0.5 + uni(rng)));
  }
  if (c.token_weights)
    for (int64_t t = 0; t < pr.n; ++t) pr.tw.push_back(static_cast<float>(0.25 + 1.5 * uni(rng)));
  auto widen = [](const std::vector<float>& f) { return std::vector<double>(f.begin(), f.end()); };
  pr.tw_d = widen(pr.tw);
  pr.soft_d = widen(pr.soft);
  pr.weights_d = widen(pr.weights);
  pr.grad_out_d = widen(pr.grad_out);

  ref_problem& r = pr.ref_in;
  r.dtype = to_ref(c.dtype);
  r.logits = pr.logits.data();
  r.n_rows = pr.n;
  r.vocab = pr.v;
  r.ld = pr.ld;
  r.logit_transform = c.logit_transform;
  r.labels = pr.labels.data();
  r.offsets = pr.offsets.data();
  r.n_seqs = pr.s;
  r.n_pairs = pr.p;
  // Explicit pairs with P = 0 still pass a (never read) non-null pointer.
  static const int64_t no_pairs[2] = {0, 0};
  r.pairs = c.explicit_pairs < 0 ? nullptr : (pr.pairs.empty() ? no_pairs : pr.pairs.data());
  r.soft_labels = c.soft ? pr.soft_d.data() : nullptr;
  r.weights = c.weights ? pr.weights_d.data() : nullptr;
  r.token_weights = c.token_weights ? pr.tw_d.data() : nullptr;
  r.user_loss_beta = c.user_loss_beta;
  r.ref_logps = nullptr;
  // The reference has one host scalar for reduced losses and [P] for none.
  r.grad_loss = c.grad_loss;
  r.grad_pair_losses = nullptr;
  if (c.grad_output) {
    if (c.opt.reduce == geopref::reduction::none) r.grad_pair_losses = pr.grad_out_d.data();
    else r.grad_loss = c.grad_loss * pr.grad_out_d[0];
  }
}

/// Reference log-probs near the policy's own (small, realistic margins):
/// the reference's margin-form log-probs plus N(0, 1), rounded to float.
inline void set_reference(problem& pr) {
  if (!pr.cfg.ref) return;
  INFO(describe(pr.cfg));
  ref_result base;
  REQUIRE(run_reference(pr.ref_in, pr.cfg.opt, false, base) == status::success);
  std::mt19937_64 rng(pr.cfg.seed ^ 0x9e3779b97f4a7c15ull);
  std::normal_distribution<double> normal(0.0, 1.0);
  pr.ref.clear();
  for (int64_t s = 0; s < pr.s; ++s) pr.ref.push_back(static_cast<float>(base.seq_logps[s] + normal(rng)));
  pr.ref_d.assign(pr.ref.begin(), pr.ref.end());
  pr.ref_in.ref_logps = pr.ref_d.data();
}

// ---------------------------------------------------------------------------
// GPU run: everything the API returns, downloaded.
struct gpu_result {
  status host_status = status::internal_error;
  status device = status::internal_error;
  std::vector<float> loss, seq_logps, token_logps, lse, grad_seq;
  std::vector<int64_t> seq_counts;
  geopref::metrics stats{};
  std::vector<uint8_t> grad;    // [N, grad_ld] raw bytes (the logits buffer when in place)
  std::vector<uint8_t> logits;  // the logits buffer after the call (out of place only)
  int64_t grad_ld = 0;
  size_t workspace_bytes = 0;
};

inline void poison(const dmem& d) {
  if (d.bytes() > 0) CUDA_REQUIRE(cudaMemset(d.get(), 0xff, d.bytes()));  // NaN / −1 everywhere
}

/// The logits on the device, `misalign` elements past a 256-byte boundary.
struct device_logits {
  dmem mem;
  uint8_t* ptr = nullptr;
  explicit device_logits(const problem& pr)
      : mem(static_cast<size_t>((pr.n * pr.ld + pr.cfg.misalign) * dtype_bytes(pr.cfg.dtype)) + 256) {
    ptr = static_cast<uint8_t*>(mem.get()) + pr.cfg.misalign * dtype_bytes(pr.cfg.dtype);
    if (!pr.logits.empty())
      CUDA_REQUIRE(cudaMemcpy(ptr, pr.logits.data(), pr.logits.size(), cudaMemcpyHostToDevice));
  }
};

/// The gradient buffer a case asks for: the logits themselves in place, else
/// a poisoned buffer of its own at stride V + grad_pad, `grad_misalign`
/// elements past a 256-byte boundary; null without a gradient.
struct device_grad {
  dmem mem;
  void* ptr = nullptr;
  int64_t ld = 0;      // the gradient's row stride
  int64_t api_ld = 0;  // the API's grad_ld: 0 (the logits' ld) in place
  int elem_bytes = 0;  // its element size
  device_grad(const problem& pr, const device_logits& logits) {
    const case_config& c = pr.cfg;
    elem_bytes = c.grad_fp32 ? 4 : dtype_bytes(c.dtype);
    ld = c.in_place ? pr.ld : pr.v + c.grad_pad;
    api_ld = c.in_place ? 0 : ld;
    if (c.grad && c.in_place) {
      ptr = logits.ptr;
    } else if (c.grad) {
      mem = dmem(static_cast<size_t>((pr.n * ld + c.grad_misalign) * elem_bytes) + 256);
      poison(mem);
      ptr = static_cast<uint8_t*>(mem.get()) + c.grad_misalign * elem_bytes;
    }
  }
  std::vector<uint8_t> download_all(const problem& pr) const {
    return download<uint8_t>(ptr, static_cast<size_t>(pr.n * ld * elem_bytes));
  }
};

/// The logits' fields of a token_inputs or token_rows: the problem's dtype,
/// [N, V] at stride ld, its logit transform.
template <class Args>
void set_logits(Args& x, const problem& pr, const void* logits, int64_t ld) {
  x.logits = logits;
  x.logits_dtype = pr.cfg.dtype;
  x.n_rows = pr.n;
  x.vocab = pr.v;
  x.ld = ld;
  x.logit_transform = pr.cfg.logit_transform;
}

/// The problem's small inputs and every optional output, on the device.
struct device_io {
  dmem labels, offsets, pairs, soft, ref, weights, grad_out, tw;
  dmem loss, stats, seq_logps, seq_counts, grad_seq, token_logps, lse;

  explicit device_io(const problem& pr) {
    const case_config& c = pr.cfg;
    std::vector<int32_t> labels32(pr.labels.begin(), pr.labels.end());
    std::vector<int32_t> offsets32(pr.offsets.begin(), pr.offsets.end());
    labels = c.label_type == gc::index_type::int32 ? upload(labels32) : upload(pr.labels);
    offsets = c.offset_type == gc::index_type::int32 ? upload(offsets32) : upload(pr.offsets);
    pairs = upload(pr.pairs.empty() ? std::vector<int64_t>{0, 0} : pr.pairs);
    soft = upload(pr.soft);
    ref = upload(pr.ref);
    weights = upload(pr.weights);
    grad_out = upload(pr.grad_out);
    tw = upload(pr.tw);
    const bool none = c.opt.reduce == geopref::reduction::none;
    loss = dmem((none ? std::max<int64_t>(pr.p, 1) : 1) * sizeof(float));
    stats = dmem(sizeof(geopref::metrics));
    seq_logps = dmem(pr.s * sizeof(float));
    seq_counts = dmem(pr.s * sizeof(int64_t));
    grad_seq = dmem(pr.s * sizeof(float));
    token_logps = dmem(pr.n * sizeof(float));
    lse = dmem(pr.n * sizeof(float));
    for (const dmem* d : {&loss, &stats, &seq_logps, &seq_counts, &grad_seq, &token_logps, &lse})
      poison(*d);
  }

  /// The rows, sequences and token weights without logits (what
  /// vocab_parallel_logps reads).
  gc::sequence_rows rows(const problem& pr) const {
    gc::sequence_rows x;
    x.n_rows = pr.n;
    x.vocab = pr.v;
    x.logit_transform = pr.cfg.logit_transform;
    x.labels = labels.get();
    x.label_type = pr.cfg.label_type;
    x.offsets = offsets.get();
    x.offset_type = pr.cfg.offset_type;
    x.n_seqs = pr.s;
    x.token_weights = pr.cfg.token_weights ? tw.get<float>() : nullptr;
    return x;
  }

  /// rows(pr) with the logits: its three blocks, and logits_source.
  gc::token_inputs tokens(const problem& pr, const void* logits, int64_t ld) const {
    gc::token_inputs x;
    const gc::sequence_rows r = rows(pr);
    static_cast<gc::vocab_rows&>(x) = r;
    static_cast<gc::sequences&>(x) = r;
    static_cast<gc::token_weighting&>(x) = r;
    x.logits = logits;
    x.logits_dtype = pr.cfg.dtype;
    x.ld = ld;
    return x;
  }

  /// train_step's arguments; grad null: no gradient; grad_ld 0: ld.
  gc::train_args train(const problem& pr, const void* logits, int64_t ld, void* grad,
                       int64_t grad_ld) const {
    const case_config& c = pr.cfg;
    gc::train_args a;
    a.tokens = tokens(pr, logits, ld);
    a.n_pairs = pr.p;
    a.pairs = c.explicit_pairs < 0 ? nullptr : pairs.get<int64_t>();
    a.soft_labels = c.soft ? soft.get<float>() : nullptr;
    a.ref_logps = c.ref ? ref.get<float>() : nullptr;
    a.weights = c.weights ? weights.get<float>() : nullptr;
    a.grad_loss = c.grad_loss;
    a.grad_output = c.grad_output ? grad_out.get<float>() : nullptr;
    a.loss = loss.get<float>();
    a.stats = stats.get<geopref::metrics>();
    a.seq_logps = seq_logps.get<float>();
    a.seq_counts = seq_counts.get<int64_t>();
    a.token_logps = token_logps.get<float>();
    a.lse = lse.get<float>();
    a.grad_seq_logps = grad_seq.get<float>();
    a.grad_logits = grad;
    a.grad_ld = grad_ld;
    a.grad_float32 = c.grad_fp32;
    return a;
  }

  /// Every output but the gradient and the logits, into r.
  void download_into(const problem& pr, gpu_result& r) const {
    r.loss = download<float>(loss.get(), loss.bytes() / sizeof(float));
    r.stats = download<geopref::metrics>(stats.get(), 1)[0];
    r.seq_logps = download<float>(seq_logps.get(), pr.s);
    r.seq_counts = download<int64_t>(seq_counts.get(), pr.s);
    r.grad_seq = download<float>(grad_seq.get(), pr.s);
    r.token_logps = download<float>(token_logps.get(), pr.n);
    r.lse = download<float>(lse.get(), pr.n);
  }
};

/// logits_grad's arguments: the rows `tokens`, lse [N] and g_s [S] on the
/// device, the gradient at `grad` with stride grad_ld (0: the logits' ld).
inline gc::grad_args grad_args_of(const gc::token_inputs& tokens, const dmem& lse,
                                  const dmem& grad_seq, void* grad, int64_t grad_ld) {
  gc::grad_args a;
  a.tokens = tokens;
  a.lse = lse.get<float>();
  a.grad_seq_logps = grad_seq.get<float>();
  a.grad_logits = grad;
  a.grad_ld = grad_ld;
  return a;
}

/// A two-phase entry on a poisoned workspace: the size query (REQUIREd to
/// succeed; `asked` gets its bytes when not null), then the call given
/// `shortfall` bytes fewer than asked for. Returns the call's status; when it
/// succeeded, `*device` holds what the device recorded.
template <class Call>
status run_poisoned(Call&& call, status* device, cudaStream_t stream = nullptr,
                    size_t shortfall = 0, size_t* asked = nullptr) {
  size_t bytes = 0;
  REQUIRE(call(nullptr, bytes) == status::success);
  if (asked != nullptr) *asked = bytes;
  dmem ws(bytes);
  poison(ws);
  // The uploads and poisoning are on the legacy default stream: cudaMemset
  // is asynchronous, and cudaMemcpy from pageable memory may return before
  // the data lands. A non-blocking `stream` is not ordered after them, so
  // wait for them before enqueuing on it.
  CUDA_REQUIRE(cudaDeviceSynchronize());
  size_t given = bytes - shortfall;
  const status st = call(ws.get(), given);
  if (st == status::success) *device = device_status_of(ws, stream);
  return st;
}

/// Runs train_step once with freshly poisoned outputs.
/// The entry a run calls: train_step with the built-in losses unless a test
/// passes another (a caller's own loss through train_step<Loss>).
using step_fn = std::function<status(void*, size_t&, const gc::train_args&, const options&, cudaStream_t)>;

inline gpu_result run_gpu(const problem& pr, cudaStream_t stream = nullptr,
                          size_t workspace_shortfall = 0, const step_fn& step_arg = {}) {
  const double user_beta = pr.cfg.user_loss_beta;
  const step_fn step = step_arg ? step_arg : step_fn([user_beta](void* w, size_t& b, const gc::train_args& a,
                                                                 const options& o, cudaStream_t st) {
    if (user_beta > 0) return gc::train_step(w, b, a, o, log_cosh_loss{user_beta}, st);
    return gc::train_step(w, b, a, o, st);
  });
  const case_config& c = pr.cfg;
  gpu_result r;
  const device_logits logits(pr);
  const device_io io(pr);
  const device_grad grad(pr, logits);
  r.grad_ld = grad.ld;
  const gc::train_args a = io.train(pr, logits.ptr, pr.ld, grad.ptr, grad.api_ld);

  r.host_status = run_poisoned([&](void* w, size_t& b) { return step(w, b, a, c.opt, stream); },
                               &r.device, stream, workspace_shortfall, &r.workspace_bytes);
  if (r.host_status != status::success) return r;
  CUDA_REQUIRE(cudaDeviceSynchronize());

  io.download_into(pr, r);
  if (c.grad) r.grad = grad.download_all(pr);
  if (!c.in_place) r.logits = download<uint8_t>(logits.ptr, pr.logits.size());
  return r;
}

// ---------------------------------------------------------------------------
// Comparison.
struct checker {
  std::string what;
  int64_t checked = 0, fails = 0, worst_i = -1;
  double worst_excess = 0, worst_got = 0, worst_want = 0, worst_tol = 0;

  explicit checker(std::string w) : what(std::move(w)) {}
  void operator()(int64_t i, double got, double want, double tol) {
    ++checked;
    if (got == want) return;  // also equal infinities
    const double d = std::fabs(got - want);
    if (d <= tol) return;
    ++fails;
    const double excess = std::isnan(d) ? INFINITY : d / (tol > 0 ? tol : 1e-300);
    if (worst_i < 0 || excess > worst_excess) {
      worst_excess = excess;
      worst_i = i;
      worst_got = got;
      worst_want = want;
      worst_tol = tol;
    }
  }
  void report() const {
    if (fails == 0) return;
    std::ostringstream o;
    o.precision(10);
    o << what << ": " << fails << " of " << checked << " outside tolerance; worst at " << worst_i
      << ": got " << worst_got << ", want " << worst_want << ", tol " << worst_tol;
    FAIL_CHECK(o.str());
  }
};

inline double out_roundoff(const case_config& c) {
  if (c.grad_fp32 || c.dtype == gc::dtype::float32) return 0.0;
  return c.dtype == gc::dtype::float16 ? 0x1p-11 : 0x1p-8;
}

inline double eps_sum(int64_t vocab) { return 2.0 * (static_cast<double>(vocab) / 128.0 + 128.0) * U32; }

/// The logit transform's error on the device (arith.cuh's maps), for a raw
/// logit z: `value` bounds |Δz'|, `slope` |Δ∂z'/∂z|. The identity is exact.
/// A scale is one product with a constant rounded once (2 U32 relative to
/// z'). A soft-cap z' = k·tanh(u·z): u·z and k are rounded (U32 each) and the
/// tanh is tanhf for float logits (a few ulp: 4 U32 allowed) or, for 16-bit
/// logits on a GPU, the MUFU's tanh.approx.f32, whose relative error the PTX
/// ISA gives as about 2⁻¹¹ (2⁻¹⁰ allowed; the emulator uses tanhf);
/// Δslope = (s/T)·2|tanh|·Δtanh plus the constant's rounding.
struct transform_error {
  double value = 0, slope = 0;
};
inline transform_error transform_error_at(const case_config& c, double z) {
  const geopref::logit_transform& tr = c.logit_transform;
  transform_error e;
  if (geopref::is_identity(tr)) return e;
  const double zt = geopref::apply(tr, z), st = tr.scale / tr.temperature;
  if (tr.softcap == 0.0) {
    e.value = 2 * U32 * std::fabs(zt);
    e.slope = 2 * U32 * st;
    return e;
  }
  const double k = tr.softcap / tr.temperature, th = std::tanh(tr.scale * z / tr.softcap);
  const double dth = (c.dtype == gc::dtype::float32 ? 4 * U32 : 0x1p-10) * std::fabs(th) +
                     U32 * std::fabs(tr.scale * z / tr.softcap) * (1 - th * th);
  e.value = k * dth + 2 * U32 * std::fabs(zt);
  e.slope = st * (2 * std::fabs(th) * dth + 2 * U32);
  return e;
}

/// What the transform adds to the error of row t's lse: its largest |Δz'|.
inline double row_transform_error(const problem& pr, int64_t t) {
  double e = 0;
  for (int64_t v = 0; v < pr.v; ++v)
    e = std::max(e, transform_error_at(pr.cfg, pr.z[static_cast<size_t>(t * pr.ld + v)]).value);
  return e;
}

inline void compare_margin_pairs(const problem& pr, const gpu_result& g, const ref_result& ref,
                                 const std::vector<double>& tol_l, std::vector<double>& tol_g);
inline void compare_gradient(const problem& pr, const gpu_result& g, const ref_result& ref,
                             const std::vector<double>& tol_lse, const std::vector<double>& tol_g);

/// Anything beyond one margin loss on plain log-ratios: another kind of
/// term, a combination, a transform, the geometric flag, token weights.
inline bool extended_loss(const case_config& c) {
  const geopref::loss_config& l = c.opt.loss;
  return c.user_loss_beta > 0 || l.n_terms > 0 || geopref::kind_of(l.type) != geopref::loss_kind::margin ||
         l.transform != geopref::margin_transform::reverse_kl || l.geometric || c.token_weights;
}

/// The pair step's outputs on the GPU against the reference, with
/// tolerances from how the reference's own pair step moves when each
/// per-sequence sum moves by its error bound tol_sum[s] (summed form) in
/// either direction: Σ_s max(|Δ+|, |Δ−|) bounds the first-order change of
/// any perturbation inside the box (|Δf| ≤ Σ |∂f/∂L_s| tol_s), and the
/// curvature at the scale of tol_s (~1e-6 relative) is included by
/// evaluating, not differentiating. Used for every term whose derivative
/// model compare_margin_pairs does not have (two-sided, sorted, sft, orpo,
/// transforms, combinations, token weights). Sets tol_g [S] (summed form).
inline void compare_pairs_by_perturbation(const problem& pr, const gpu_result& g,
                                          const ref_result& ref, const std::vector<double>& tol_l,
                                          std::vector<double>& tol_g) {
  const case_config& c = pr.cfg;
  const bool average = geopref::uses_average_logps(c.opt);
  const bool none = c.opt.reduce == geopref::reduction::none;
  // The reference's sums, in its own order (row order, w_t ℓ_t): bitwise its L_s.
  std::vector<double> sums(static_cast<size_t>(pr.s), 0.0), tol_sum(static_cast<size_t>(pr.s));
  const int64_t rows_end = pr.offsets.back();
  for (int64_t s = 0; s < pr.s; ++s) {
    for (int64_t t = pr.offsets[s]; t < pr.offsets[s + 1]; ++t)
      if (t < rows_end && pr.labels[t] != c.opt.ignore_index)
        sums[s] += c.token_weights ? pr.tw_d[t] * ref.token_logps[t] : ref.token_logps[t];
    // tol_l is in the reported form: back to the sum.
    tol_sum[s] = average && ref.seq_counts[s] > 0 ? tol_l[s] * static_cast<double>(ref.seq_counts[s]) : tol_l[s];
  }
  ref_result base;
  REQUIRE(run_pair_step(pr.ref_in, c.opt, sums, ref.seq_counts, base) == status::success);
  // The pair step on the reference's sums is the reference.
  CHECK(base.loss == ref.loss);
  auto metric_vec = [](const geopref::metrics& m) {
    return std::vector<double>{m.rewards_chosen, m.rewards_rejected, m.rewards_accuracies,
                               m.rewards_margins, m.logps_chosen, m.logps_rejected,
                               m.calibration_error};
  };
  double tol_loss = 0;
  std::vector<double> tol_pl(static_cast<size_t>(pr.p), 0.0), tol_m(7, 0.0);
  const std::vector<double> m0 = metric_vec(base.stats);
  for (int64_t s = 0; s < pr.s; ++s) {
    double d_loss = 0;
    std::vector<double> d_pl(static_cast<size_t>(pr.p), 0.0), d_g(static_cast<size_t>(pr.s), 0.0), d_m(7, 0.0);
    for (double sign : {-1.0, 1.0}) {
      std::vector<double> moved = sums;
      moved[s] += sign * tol_sum[s];
      ref_result r;
      REQUIRE(run_pair_step(pr.ref_in, c.opt, moved, ref.seq_counts, r) == status::success);
      d_loss = std::max(d_loss, std::fabs(r.loss - base.loss));
      for (int64_t i = 0; i < pr.p; ++i) d_pl[i] = std::max(d_pl[i], std::fabs(r.pair_losses[i] - base.pair_losses[i]));
      for (int64_t q = 0; q < pr.s; ++q) d_g[q] = std::max(d_g[q], std::fabs(r.grad_seq_logps[q] - base.grad_seq_logps[q]));
      const std::vector<double> m1 = metric_vec(r.stats);
      for (size_t q = 0; q < 7; ++q) d_m[q] = std::max(d_m[q], std::fabs(m1[q] - m0[q]));
    }
    tol_loss += d_loss;
    for (int64_t i = 0; i < pr.p; ++i) tol_pl[i] += d_pl[i];
    for (int64_t q = 0; q < pr.s; ++q) tol_g[q] += d_g[q];
    for (size_t q = 0; q < 7; ++q) tol_m[q] += d_m[q];
  }
  // Plus the float rounding of each output (2 U32 relative) and the
  // pair step's double arithmetic (1e-12 relative, far below).
  auto rel = [](double x) { return 2 * U32 * std::fabs(x) + 1e-12 * std::fabs(x) + 1e-300; };
  if (none) {
    checker ck("pair losses (reduction none)");
    for (int64_t i = 0; i < pr.p; ++i) ck(i, g.loss[i], ref.pair_losses[i], tol_pl[i] + rel(ref.pair_losses[i]));
    ck.report();
  } else {
    checker ck("loss");
    ck(0, g.loss[0], ref.loss, tol_loss + rel(ref.loss));
    ck.report();
  }
  {
    checker ck("metrics");
    const std::vector<double> got = metric_vec(g.stats), want = metric_vec(ref.stats);
    for (size_t q = 0; q < 7; ++q) ck(static_cast<int64_t>(q), got[q], want[q], tol_m[q] + 1e-12 * std::fabs(want[q]) + 1e-300);
    ck.report();
  }
  checker ck_gs("grad_seq_logps");
  for (int64_t s = 0; s < pr.s; ++s) {
    // g_s is a float output: below float's normal range (2^-126) it keeps
    // fewer digits or flushes to 0 (saturated losses reach 1e-60 in double).
    tol_g[s] += 2 * U32 * std::fabs(ref.grad_seq_logps[s]) + 0x1p-126;
    ck_gs(s, g.grad_seq[s], ref.grad_seq_logps[s], tol_g[s]);
  }
  ck_gs.report();
}

/// Compares a GPU run with the reference, element by element.
inline void compare(const problem& pr, const gpu_result& g) {
  const case_config& c = pr.cfg;
  INFO(describe(c));
  REQUIRE(g.host_status == status::success);
  REQUIRE(g.device == status::success);
  ref_result ref;
  REQUIRE(run_reference(pr.ref_in, c.opt, c.grad, ref) == status::success);
  const bool average = geopref::uses_average_logps(c.opt);
  const int64_t rows_end = pr.offsets.back();
  auto scored = [&](int64_t t) { return t < rows_end && pr.labels[t] != c.opt.ignore_index; };

  // Rows.
  std::vector<double> tol_lse(static_cast<size_t>(pr.n), 0.0), tol_tok(static_cast<size_t>(pr.n), 0.0);
  checker ck_lse("lse"), ck_tok("token_logps");
  for (int64_t t = 0; t < pr.n; ++t) {
    if (!scored(t)) {
      ck_lse(t, g.lse[t], 0.0, 0.0);
      ck_tok(t, g.token_logps[t], 0.0, 0.0);
      continue;
    }
    const double zy_raw = pr.z[static_cast<size_t>(t * pr.ld + pr.labels[t])];
    const double zy = geopref::apply(c.logit_transform, zy_raw);
    tol_lse[t] = eps_sum(pr.v) + 2 * U32 * std::fabs(ref.lse[t]) + row_transform_error(pr, t);
    tol_tok[t] = tol_lse[t] + 2 * U32 * (std::fabs(ref.token_logps[t]) + std::fabs(zy)) +
                 transform_error_at(c, zy_raw).value;
    ck_lse(t, g.lse[t], ref.lse[t], tol_lse[t]);
    ck_tok(t, g.token_logps[t], ref.token_logps[t], tol_tok[t]);
  }
  ck_lse.report();
  ck_tok.report();

  // Sequences.
  std::vector<double> tol_l(static_cast<size_t>(pr.s), 0.0);
  checker ck_seq("seq_logps");
  for (int64_t s = 0; s < pr.s; ++s) {
    double e = 0;
    for (int64_t t = pr.offsets[s]; t < pr.offsets[s + 1]; ++t)
      e += (c.token_weights ? std::fabs(pr.tw_d[t]) : 1.0) * tol_tok[t];
    if (average && ref.seq_counts[s] > 0) e /= static_cast<double>(ref.seq_counts[s]);
    tol_l[s] = e;
    ck_seq(s, g.seq_logps[s], ref.seq_logps[s], e + 2 * U32 * std::fabs(ref.seq_logps[s]));
    CHECK(g.seq_counts[s] == ref.seq_counts[s]);
  }
  ck_seq.report();

  std::vector<double> tol_g(static_cast<size_t>(pr.s), 0.0);
  if (extended_loss(c)) {
    compare_pairs_by_perturbation(pr, g, ref, tol_l, tol_g);
  } else {
    compare_margin_pairs(pr, g, ref, tol_l, tol_g);
  }
  compare_gradient(pr, g, ref, tol_lse, tol_g);
}

/// Pairs of a single margin loss without transform: the error of each pair
/// loss and coefficient from the margin error, with the loss's derivative.
inline void compare_margin_pairs(const problem& pr, const gpu_result& g, const ref_result& ref,
                                 const std::vector<double>& tol_l, std::vector<double>& tol_g) {
  const case_config& c = pr.cfg;
  const bool average = geopref::uses_average_logps(c.opt);
  // Pairs: the error of each pair loss and coefficient from the margin error.
  const geopref::any_loss<double> f(c.opt.loss);
  const double div = geopref::reduction_divisor(c.opt, pr.p);
  const bool none = c.opt.reduce == geopref::reduction::none;
  double tol_total = 0, tol_rc = 0, tol_rr = 0, tol_margin = 0, tol_cal = 0, tol_acc = 0;
  checker ck_pair("pair losses (reduction none)");
  for (int64_t i = 0; i < pr.p; ++i) {
    const int64_t a = c.explicit_pairs < 0 ? i : pr.pairs[2 * i];
    const int64_t b = c.explicit_pairs < 0 ? pr.p + i : pr.pairs[2 * i + 1];
    const double eh = tol_l[a] + tol_l[b];
    const double h = ref.margins[i];
    const double prob = c.soft ? pr.soft_d[i] : 1.0;
    const double w = c.weights ? pr.weights_d[i] : 1.0;
    double up = c.grad_loss;
    if (c.grad_output) up *= none ? pr.grad_out_d[i] : pr.grad_out_d[0];
    double dmax = 0, ddmax = 0;
    const double d0 = f.derivative(h, prob);
    for (double hh : {h - eh, h, h + eh}) {
      dmax = std::max(dmax, std::fabs(f.derivative(hh, prob)));
      ddmax = std::max(ddmax, std::fabs(f.derivative(hh, prob) - d0));
    }
    const double tl = w * dmax * eh + 1e-12 * std::fabs(ref.pair_losses[i]);
    tol_total += tl;
    const double tc = std::fabs(up) * (w / div) * ddmax + 1e-12 * std::fabs(up * w / div * d0);
    if (a == b) {
      // a pair of a sequence with itself: +c − c, exactly 0 on both sides
    } else {
      tol_g[a] += tc;
      tol_g[b] += tc;
    }
    if (none) ck_pair(i, g.loss[i], ref.pair_losses[i], tl + 2 * U32 * std::fabs(ref.pair_losses[i]));
    tol_rc += tol_l[a];
    tol_rr += tol_l[b];
    tol_margin += eh;
    tol_cal += 0.25 * c.opt.loss.beta * eh;
    if (std::fabs(h) <= eh) tol_acc += 1.0;
  }
  ck_pair.report();
  if (!none) {
    checker ck_loss("loss");
    ck_loss(0, g.loss[0], ref.loss, tol_total / div + 2 * U32 * std::fabs(ref.loss) + 1e-300);
    ck_loss.report();
  }
  {
    const double inv = pr.p > 0 ? 1.0 / static_cast<double>(pr.p) : 0.0, beta = c.opt.loss.beta;
    checker ck_m("metrics");
    auto rel = [](double x) { return 1e-12 * std::fabs(x) + 1e-300; };
    const geopref::metrics& m = g.stats;
    const geopref::metrics& w = ref.stats;
    ck_m(0, m.rewards_chosen, w.rewards_chosen, beta * tol_rc * inv + rel(w.rewards_chosen));
    ck_m(1, m.rewards_rejected, w.rewards_rejected, beta * tol_rr * inv + rel(w.rewards_rejected));
    ck_m(2, m.rewards_accuracies, w.rewards_accuracies, tol_acc * inv + rel(w.rewards_accuracies));
    ck_m(3, m.rewards_margins, w.rewards_margins, beta * tol_margin * inv + rel(w.rewards_margins));
    ck_m(4, m.logps_chosen, w.logps_chosen, tol_rc * inv + rel(w.logps_chosen));
    ck_m(5, m.logps_rejected, w.logps_rejected, tol_rr * inv + rel(w.logps_rejected));
    ck_m(6, m.calibration_error, w.calibration_error, tol_cal * inv + rel(w.calibration_error));
    ck_m.report();
  }
  checker ck_gs("grad_seq_logps");
  for (int64_t s = 0; s < pr.s; ++s) {
    if (average && ref.seq_counts[s] > 0) tol_g[s] /= static_cast<double>(ref.seq_counts[s]);
    tol_g[s] += 2 * U32 * std::fabs(ref.grad_seq_logps[s]);
    ck_gs(s, g.grad_seq[s], ref.grad_seq_logps[s], tol_g[s]);
  }
  ck_gs.report();
}

/// The per-token statistics' outputs of N rows (log Σp², the mean logit,
/// is_top1; poisoned) for a forward's arguments (token_logps_args,
/// linear_token_logps_args), and what they held after it.
struct token_stats_outputs {
  int64_t n;
  dmem lssp, mean, top1;
  explicit token_stats_outputs(int64_t rows)
      : n(rows), lssp(static_cast<size_t>(rows) * 4), mean(static_cast<size_t>(rows) * 4),
        top1(static_cast<size_t>(rows) + 16) {
    for (const dmem* d : {&lssp, &mean, &top1}) poison(*d);
  }
  template <class Args>
  void attach(Args& a) const {
    a.log_sum_sq_probs = lssp.get<float>();
    a.mean_logits = mean.get<float>();
    a.is_top1 = top1.get<uint8_t>();
  }
  void read(std::vector<float>& l, std::vector<float>& m, std::vector<uint8_t>& t) const {
    l = download<float>(lssp.get(), static_cast<size_t>(n));
    m = download<float>(mean.get(), static_cast<size_t>(n));
    t = download<uint8_t>(top1.get(), static_cast<size_t>(n));
  }
};

/// token_logps_grad's arguments after the forward `fa` (its rows, and the
/// lse it wrote): the upstream g_t, the gradient into `grad` with row
/// stride grad_ld.
inline gc::token_grad_args grad_args_after(const gc::token_logps_args& fa, const dmem& g,
                                           void* grad, int64_t grad_ld) {
  gc::token_grad_args ba;
  ba.rows = fa.rows;
  ba.lse = fa.lse;
  ba.grad_token_logps = g.get<float>();
  ba.grad_logits = grad;
  ba.grad_ld = grad_ld;
  return ba;
}

/// Columns [V, grad_ld) of gradient row t (`row`, out_es bytes an element)
/// untouched: the poison (0xff) out of place, the logits' own bytes in place.
inline void check_grad_padding(checker& ck_pad, const problem& pr, int64_t t, const uint8_t* row,
                               int64_t grad_ld, int out_es, bool in_place) {
  const int es = dtype_bytes(pr.cfg.dtype);
  for (int64_t v = pr.v; v < grad_ld; ++v) {
    const uint8_t* e = row + v * out_es;
    bool same = true;
    for (int b = 0; b < out_es; ++b)
      same = same && e[b] == (in_place ? pr.logits[static_cast<size_t>((t * pr.ld + v) * es + b)] : 0xff);
    ck_pad(t * grad_ld + v, same ? 0.0 : 1.0, 0.0, 0.0);
  }
}

/// The bound of one element c·(𝟙 − p)·∂z'/∂z of the logits' gradient (slope
/// 1 without a transform): z the raw logit, `lse` the row's exact lse (of
/// z') and tol_lse its bound, `label` whether it is the row's label column,
/// `coef` the row's exact coefficient c and coef_err its error (0 for a
/// caller's exact g_t), `want` the exact element. p moves by p·(err(lse) +
/// the transform's error + the float exp's); the slope by transform_error_at's;
/// the stored element rounds once more (3u + the output's u).
inline double logit_grad_tol(const case_config& c, double z, double lse, double tol_lse, bool label,
                             double coef, double coef_err, double want) {
  const gc::dtype out_dt = c.grad_fp32 ? gc::dtype::float32 : c.dtype;
  const double floor = out_dt == gc::dtype::float16 ? 0x1p-25 : 1e-40;
  const double d = geopref::apply(c.logit_transform, z) - lse;
  const double p = std::exp(d);
  const double ind = label ? 1.0 : 0.0;
  const transform_error te = transform_error_at(c, z);
  const double sl = std::fabs(geopref::slope(c.logit_transform, z));
  const double eps_p = tol_lse + te.value + (2 * std::fabs(d) + 6) * U32;
  return ((p > 0 ? std::fabs(coef) * p * eps_p : 0.0) + coef_err * std::fabs(ind - p)) * sl +
         std::fabs(coef) * std::fabs(ind - p) * te.slope +
         (3 * U32 + out_roundoff(c)) * std::fabs(want) + floor;
}

/// The logits' gradient g.grad (a gpu_result's or the like: rows of g.grad_ld
/// elements in the output dtype) against `want` [N, V]: rows that scored(t) rejects exactly 0, the
/// columns [V, grad_ld) untouched (check_grad_padding), and each scored
/// element checked by element(t, v, got, want, ck_grad).
template <class Result, class Scored, class Element>
void check_logit_grad(const problem& pr, const Result& g, const std::vector<double>& want,
                      Scored&& scored, Element&& element) {
  const case_config& c = pr.cfg;
  const gc::dtype out_dt = c.grad_fp32 ? gc::dtype::float32 : c.dtype;
  const int out_es = dtype_bytes(out_dt);
  checker ck_grad("grad_logits"), ck_zero("grad_logits of unscored rows"),
      ck_pad("columns [V, grad_ld) untouched");
  for (int64_t t = 0; t < pr.n; ++t) {
    const uint8_t* row = g.grad.data() + t * g.grad_ld * out_es;
    for (int64_t v = 0; v < pr.v; ++v) {
      const double got = decode(out_dt, row + v * out_es);
      const double w = want[static_cast<size_t>(t * pr.v + v)];
      if (!scored(t)) ck_zero(t * pr.v + v, got, 0.0, 0.0);
      else element(t, v, got, w, ck_grad);
    }
    check_grad_padding(ck_pad, pr, t, row, g.grad_ld, out_es, c.in_place);
  }
  ck_grad.report();
  ck_zero.report();
  ck_pad.report();
}

/// The gradient with respect to the logits, from the coefficients' error
/// bounds tol_g [S] (summed form).
inline void compare_gradient(const problem& pr, const gpu_result& g, const ref_result& ref,
                             const std::vector<double>& tol_lse, const std::vector<double>& tol_g) {
  const case_config& c = pr.cfg;
  const int64_t rows_end = pr.offsets.back();
  auto scored = [&](int64_t t) { return t < rows_end && pr.labels[t] != c.opt.ignore_index; };
  // Logits untouched (out of place).
  if (!c.in_place) CHECK(g.logits == pr.logits);

  if (!c.grad) return;
  std::vector<int64_t> row_seq(static_cast<size_t>(pr.n), -1);
  for (int64_t s = 0; s < pr.s; ++s)
    for (int64_t t = pr.offsets[s]; t < pr.offsets[s + 1]; ++t) row_seq[t] = s;
  // The element is g_s·(𝟙 − p)·∂z'/∂z, g_s off by tol_g.
  check_logit_grad(pr, g, ref.grad_logits, scored,
                   [&](int64_t t, int64_t v, double got, double want, checker& ck) {
                     const double tw = c.token_weights ? pr.tw_d[t] : 1.0;
                     const double gs = ref.grad_seq_logps[row_seq[t]] * tw;
                     const double z = pr.z[static_cast<size_t>(t * pr.ld + v)];
                     ck(t * pr.v + v, got, want,
                        logit_grad_tol(c, z, ref.lse[t], tol_lse[t], v == pr.labels[t], gs,
                                       tol_g[row_seq[t]] * std::fabs(tw), want));
                   });
}

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

/// Runs a problem (its reference set) and compares the run with the reference.
inline gpu_result run_compared(const problem& pr) {
  gpu_result r = run_gpu(pr);
  compare(pr, r);
  return r;
}

/// Every output of two runs, bit for bit.
inline void same_outputs(const gpu_result& a, const gpu_result& b) {
  CHECK(same_bits(a.loss, b.loss));
  CHECK(std::memcmp(&a.stats, &b.stats, sizeof(geopref::metrics)) == 0);
  CHECK(same_bits(a.seq_logps, b.seq_logps));
  CHECK(same_bits(a.seq_counts, b.seq_counts));
  CHECK(same_bits(a.token_logps, b.token_logps));
  CHECK(same_bits(a.lse, b.lse));
  CHECK(same_bits(a.grad_seq, b.grad_seq));
  CHECK(same_bits(a.grad, b.grad));
}

/// Runs a problem twice: compares the first run with the reference and the
/// second with the first, bit for bit.
inline void check_case(const case_config& c) {
  problem pr;
  make_problem(c, pr);
  set_reference(pr);
  const gpu_result first = run_gpu(pr);
  compare(pr, first);
  const gpu_result second = run_gpu(pr);
  INFO(describe(c) << " (second run, bitwise)");
  same_outputs(second, first);
}

}  // namespace geopref::test
