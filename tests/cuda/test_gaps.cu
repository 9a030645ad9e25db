// tests/cuda/test_gaps.cu — cases for what the rest of the suite let through
// when small faults were planted in the kernels and their host side (issue
// 15). Each case names the fault it guards against. All are fast (not
// [vocab] / [matrix] / [large]), so CI also runs them under ASan/UBSan on the
// host emulator; the 64-bit row offset case runs only there (it needs the
// emulator's direct access to host memory).
#include <catch2/catch.hpp>

#include <cstdio>
#include <cstring>

#include "gpu_harness.cuh"

#if defined(GEOPREF_HOST_EMULATION)
#include <sys/mman.h>
#endif

using namespace geopref::test;
using geopref::loss_type;
using geopref::reduction;

namespace {

// ---------------------------------------------------------------------------
// Running a problem with the logits, the gradient and the workspace where a
// case wants them (run_gpu in gpu_harness.cuh always allocates them itself).


/// A poisoned workspace of exactly `bytes`, starting `offset` bytes past the
/// 256-byte boundary cudaMalloc returns, and ending where the allocation
/// ends: with offset 1 the library's rounding of the base uses all 255 spare
/// bytes, so a piece the layout made too short runs into the guard band
/// (AddressSanitizer in the sanitizer build).
struct tight_workspace {
  dmem mem;
  void* ptr = nullptr;
  tight_workspace(size_t bytes, size_t offset) : mem(bytes + offset) {
    poison(mem);
    ptr = static_cast<uint8_t*>(mem.get()) + offset;
  }
};

/// A two-phase entry on a tight_workspace one byte past alignment (both
/// phases REQUIREd to succeed); returns what the device recorded.
template <class Call>
status run_tight(Call&& call) {
  size_t bytes = 0;
  REQUIRE(call(nullptr, bytes) == status::success);
  tight_workspace ws(bytes, 1);
  CUDA_REQUIRE(cudaDeviceSynchronize());
  REQUIRE(call(ws.ptr, bytes) == status::success);
  return device_status_of(ws.ptr);
}
#define GEOPREF_RUN_TIGHT(entry, ...) \
  run_tight([&](void* ws_, size_t& bytes_) { return entry(ws_, bytes_, __VA_ARGS__); })

/// train_step over logits already in place at `logits` (stride ld), gradient
/// to `grad` (stride grad_ld; null: none), workspace `ws_offset` bytes past a
/// 256-byte boundary and exactly as large as asked.
gpu_result run_train(const problem& pr, const void* logits, int64_t ld, void* grad, int64_t grad_ld,
                     size_t ws_offset, void (*tweak)(gc::train_args&) = nullptr) {
  gpu_result r;
  device_io io(pr);
  gc::train_args a = io.train(pr, logits, ld, grad, grad_ld);
  if (tweak != nullptr) tweak(a);
  size_t bytes = 0;
  r.host_status = gc::train_step(nullptr, bytes, a, pr.cfg.opt);
  if (r.host_status != status::success) return r;
  r.workspace_bytes = bytes;
  tight_workspace ws(bytes, ws_offset);
  CUDA_REQUIRE(cudaDeviceSynchronize());  // uploads and poison before the call (legacy stream anyway)
  r.host_status = gc::train_step(ws.ptr, bytes, a, pr.cfg.opt);
  if (r.host_status != status::success) return r;
  REQUIRE(gc::device_status(ws.ptr, nullptr, &r.device) == status::success);
  CUDA_REQUIRE(cudaDeviceSynchronize());
  io.download_into(pr, r);
  return r;
}


problem make(const case_config& c) {
  problem pr;
  make_problem(c, pr);
  set_reference(pr);
  return pr;
}

}  // namespace

// ---------------------------------------------------------------------------
// Fault: a 32-bit row offset (`t * ld` in int32) in forward_kernel or
// backward_kernel. Two rows and a row stride of 2³² + V + 5 elements (8 GB of
// bfloat16, 16 GB of float): the logits and the gradient live in a reserved
// mapping (MAP_NORESERVE) of which only the pages of the two rows are ever
// touched. The emulator's kernels read and write host memory directly, so no
// device allocation is needed (the library makes no copy of the logits or
// the gradient); the small inputs and outputs are ordinary emulated device
// memory. A 32-bit offset of row 1 (signed or not) is V + 5: inside the
// mapping, past row 0's data, where the pages are still zero, so the fault
// gives wrong numbers, never a crash. The GPU covers this with [large].
#if defined(GEOPREF_HOST_EMULATION)
TEST_CASE("row strides above 2^32 elements: 64-bit row offsets (emulator only)", "[gpu][gaps]") {
  for (bool in_place : {true, false}) {
    case_config c;
    c.dtype = gc::dtype::bfloat16;
    c.vocab = 8203;  // 1025 vectors: 2 splits per row, so partials and the combine too
    c.misalign = 1;  // a scalar prologue in both rows
    c.seq_lens = {1, 1};
    c.mask_prob = 0.0;
    c.opt.loss.type = loss_type::gdpo;
    c.in_place = in_place;
    c.grad_fp32 = !in_place;  // out of place: a float gradient with its own huge stride
    c.seed = in_place ? 15001 : 15002;
    INFO(describe(c));
    REQUIRE(geopref::cuda::detail::choose_splits(2, c.vocab, 2) == 2);
    const problem pr = make(c);  // compact layout (ld = V): what the reference reads

    const int64_t big_ld = (int64_t{1} << 32) + c.vocab + 5;
    const int64_t grad_ld = in_place ? big_ld : (int64_t{1} << 32) + c.vocab + 9;
    const int es = 2, out_es = c.grad_fp32 ? 4 : 2;
    sparse_mapping zmap(static_cast<size_t>((big_ld + c.vocab + c.misalign) * es));
    // A failure here is the machine's (vm.overcommit_memory = 2 ignores
    // MAP_NORESERVE), not the library's; it is reported, never skipped.
    if (zmap.ptr == nullptr) FAIL("cannot reserve 8 GB of address space with mmap(MAP_NORESERVE)");
    uint8_t* logits = zmap.ptr + c.misalign * es;
    for (int64_t t = 0; t < pr.n; ++t)
      std::memcpy(logits + t * big_ld * es, pr.logits.data() + t * pr.v * es, static_cast<size_t>(pr.v * es));

    constexpr int64_t PAD_CHECK = 16;  // columns past V that must stay as they were
    sparse_mapping gmap(in_place ? 0 : static_cast<size_t>((grad_ld + c.vocab + PAD_CHECK) * out_es));
    uint8_t* grad = logits;
    if (!in_place) {
      if (gmap.ptr == nullptr) FAIL("cannot reserve 16 GB of address space with mmap(MAP_NORESERVE)");
      grad = gmap.ptr;
      for (int64_t t = 0; t < pr.n; ++t)
        std::memset(grad + t * grad_ld * out_es, 0xff, static_cast<size_t>((pr.v + PAD_CHECK) * out_es));
    }

    gpu_result r = run_train(pr, logits, big_ld, grad, in_place ? 0 : grad_ld, 0);
    // The two rows, gathered into the compact layout compare() expects.
    r.grad_ld = pr.v;
    r.grad.resize(static_cast<size_t>(pr.n * pr.v * out_es));
    r.logits.resize(pr.logits.size());
    for (int64_t t = 0; t < pr.n; ++t) {
      std::memcpy(r.grad.data() + t * pr.v * out_es, grad + t * grad_ld * out_es,
                  static_cast<size_t>(pr.v * out_es));
      std::memcpy(r.logits.data() + t * pr.v * es, logits + t * big_ld * es, static_cast<size_t>(pr.v * es));
      if (!in_place)
        for (int64_t b = pr.v * out_es; b < (pr.v + PAD_CHECK) * out_es; ++b)
          CHECK(grad[t * grad_ld * out_es + b] == 0xff);
    }
    compare(pr, r);
  }
}
#endif

// ---------------------------------------------------------------------------
// Fault: a piece of a workspace layout shorter than its buffer (e.g.
// make_grad_layout's row_seq short by up to 63 rows), hidden by the
// 256-byte rounding and the 255 spare bytes. N = 65 puts 4N bytes just past
// a multiple of 256, the workspace pointer is 1 byte past a boundary and the
// allocation ends exactly where the asked-for bytes end: any missing row
// runs into the guard band. Every entry point, against the reference (and
// logits_grad bitwise against the fused gradient). The layouts themselves are
// checked piece by piece in tests/cuda_host/test_cuda_helpers.cpp.
TEST_CASE("workspaces of exactly the asked size at a pointer 1 byte past a boundary", "[gpu][small][gaps]") {
  uint64_t seed = 15100;
  for (gc::dtype dt : {gc::dtype::bfloat16}) {  // the layouts do not depend on the dtype's kernels
    case_config c;
    c.dtype = dt;
    c.vocab = 37;
    c.pad = 3;
    c.misalign = 1;
    c.seq_lens = {13, 9, 0, 17, 10, 8};  // 57 rows in sequences
    c.extra_rows = 8;                    // N = 65
    c.explicit_pairs = 4;
    c.opt.loss.type = loss_type::gdpo;
    c.opt.average_logps = true;
    c.seed = ++seed;
    INFO(describe(c));
    const problem pr = make(c);
    REQUIRE(pr.n == 65);
    const int out_es = dtype_bytes(dt);
    const int64_t grad_ld = pr.v;

    // train_step, with the gradient.
    device_logits z(pr);
    dmem grad_mem(static_cast<size_t>(pr.n * grad_ld * out_es));
    poison(grad_mem);
    gpu_result fused = run_train(pr, z.ptr, pr.ld, grad_mem.get(), grad_ld, 1);
    fused.grad_ld = grad_ld;
    fused.grad = download<uint8_t>(grad_mem.get(), grad_mem.bytes());
    fused.logits = download<uint8_t>(z.ptr, pr.logits.size());
    compare(pr, fused);

    // logits_grad from the fused run's lse and g_s: the same kernel on the
    // same inputs, so bitwise the same gradient.
    {
      device_io io(pr);
      dmem lse = upload(fused.lse), gs = upload(fused.grad_seq);
      dmem g2(static_cast<size_t>(pr.n * grad_ld * out_es));
      poison(g2);
      gc::grad_args a = grad_args_of(io.tokens(pr, z.ptr, pr.ld), lse, gs, g2.get(), grad_ld);
      CHECK(GEOPREF_RUN_TIGHT(gc::logits_grad, a, c.opt) == status::success);
      CHECK(same_bits(download<uint8_t>(g2.get(), g2.bytes()), fused.grad));
    }

    // sequence_logps: bitwise train_step's forward outputs.
    {
      device_io io(pr);
      gc::logps_args a;
      a.tokens = io.tokens(pr, z.ptr, pr.ld);
      a.seq_logps = io.seq_logps.get<float>();
      a.seq_counts = io.seq_counts.get<int64_t>();
      a.token_logps = io.token_logps.get<float>();
      a.lse = io.lse.get<float>();
      CHECK(GEOPREF_RUN_TIGHT(gc::sequence_logps, a, c.opt) == status::success);
      gpu_result r;
      io.download_into(pr, r);
      CHECK(same_bits(r.seq_logps, fused.seq_logps));
      CHECK(same_bits(r.seq_counts, fused.seq_counts));
      CHECK(same_bits(r.token_logps, fused.token_logps));
      CHECK(same_bits(r.lse, fused.lse));
    }
  }
}

// ---------------------------------------------------------------------------
// Fault: rejecting a −∞ reference log-prob (docs/math.md: only NaN and +∞
// are invalid). R = −∞ makes the margin ±∞: dpo's loss and gradient are then
// exactly 0 for R_a = −∞; with R_b = −∞ gdpo's geometric margin is −∞, an
// infinite loss with a finite gradient (or exactly 0 with weight 0). All must
// match the reference.
TEST_CASE("a -inf reference log-prob is valid", "[gpu][small][gaps]") {
  uint64_t seed = 15200;
  for (int variant = 0; variant < 3; ++variant) {
    case_config c;
    c.dtype = gc::dtype::float16;
    c.vocab = 37;
    c.misalign = 1;
    c.seq_lens = {5, 7, 6, 4, 3, 8};
    c.opt.loss.type = variant == 0 ? loss_type::dpo : loss_type::gdpo;
    c.opt.reduce = variant == 2 ? reduction::none : reduction::mean;
    c.weights = variant == 2;
    c.seed = ++seed;
    INFO(describe(c) << " variant " << variant);
    problem pr;
    make_problem(c, pr);
    set_reference(pr);
    // TRL layout, P = 3: pair 0 = (0, 3), pair 1 = (1, 4), pair 2 = (2, 5).
    auto set_ref = [&](int64_t s, float v) {
      pr.ref[static_cast<size_t>(s)] = v;
      pr.ref_d[static_cast<size_t>(s)] = v;
    };
    auto set_soft = [&](int64_t i, float v) {
      pr.soft[static_cast<size_t>(i)] = v;
      pr.soft_d[static_cast<size_t>(i)] = v;
    };
    // One infinity per problem: +∞ and −∞ margins in one metric sum would
    // make it NaN (∞ − ∞), on both sides, and NaN never compares equal.
    if (variant == 0) {
      set_ref(0, -INFINITY);  // chosen side of pair 0: h = +∞
      set_soft(0, 0.9f);
    } else {
      set_ref(4, -INFINITY);  // rejected side of pair 1: h = −∞
      set_soft(1, 0.75f);     // p̂ ≠ 0.5: (2p̂ − 1)·(−∞) = −∞ (0·∞ would be NaN)
    }
    if (variant == 2) {  // a zero weight on the infinite pair contributes exactly nothing
      pr.weights[1] = 0.0f;
      pr.weights_d[1] = 0.0;
    }
    device_logits z(pr);
    dmem grad_mem(static_cast<size_t>(pr.n * pr.v * dtype_bytes(c.dtype)));
    poison(grad_mem);
    gpu_result r = run_train(pr, z.ptr, pr.ld, grad_mem.get(), pr.v, 0);
    REQUIRE(r.host_status == status::success);
    CHECK(r.device == status::success);
    r.grad_ld = pr.v;
    r.grad = download<uint8_t>(grad_mem.get(), grad_mem.bytes());
    r.logits = download<uint8_t>(z.ptr, pr.logits.size());
    compare(pr, r);
    // β(L − (−∞)) = +∞ enters the mean of one side's rewards.
    CHECK(std::isinf(variant == 0 ? r.stats.rewards_chosen : r.stats.rewards_rejected));
  }
}

// ---------------------------------------------------------------------------
// Fault: counting a tie (chosen reward == rejected reward) as a win in
// rewards/accuracies. compare() allows ±1 pair wherever |h| is within its
// error bound, so ties need an exact check: pairs of a sequence with itself
// and of two sequences with identical rows (every row 64-byte aligned, so the
// kernels partition and sum them identically: bitwise equal L). The other
// pairs have margins far from 0, so the expected count is exact.
TEST_CASE("rewards/accuracies: ties are not wins, checked exactly", "[gpu][small][gaps]") {
  for (bool ref : {false, true}) {
    case_config c;
    c.dtype = gc::dtype::float32;
    c.vocab = 37;
    c.pad = 11;  // ld = 48 floats = 192 bytes: every row at the same alignment
    c.seq_lens = {6, 2, 6, 9, 16};  // lengths far apart: reference-free margins far from 0
    c.mask_prob = 0.1;
    c.explicit_pairs = 0;  // set below
    c.ref = ref;
    c.opt.loss.type = loss_type::gdpo;
    c.seed = ref ? 15301 : 15302;
    INFO(describe(c));
    problem pr;
    make_problem(c, pr);
    // Sequence 2 := a copy of sequence 0 (rows 0..5 → rows 11..16).
    const int es = 4;
    for (int64_t k = 0; k < 6; ++k) {
      const int64_t from = k, to = pr.offsets[2] + k;
      std::memcpy(&pr.logits[static_cast<size_t>(to * pr.ld * es)], &pr.logits[static_cast<size_t>(from * pr.ld * es)],
                  static_cast<size_t>(pr.ld * es));
      std::memcpy(&pr.z[static_cast<size_t>(to * pr.ld)], &pr.z[static_cast<size_t>(from * pr.ld)],
                  static_cast<size_t>(pr.ld) * sizeof(float));
      pr.labels[static_cast<size_t>(to)] = pr.labels[static_cast<size_t>(from)];
    }
    // Ties: (0,0) (3,3) (0,2) (2,0); decided: (1,3) (3,1) (4,0) (0,4) (4,1).
    pr.pairs = {0, 0, 3, 3, 0, 2, 2, 0, 1, 3, 3, 1, 4, 0, 0, 4, 4, 1};
    pr.p = static_cast<int64_t>(pr.pairs.size() / 2);
    pr.ref_in.pairs = pr.pairs.data();
    pr.ref_in.n_pairs = pr.p;
    pr.soft.assign(static_cast<size_t>(pr.p), 0.7f);
    pr.soft_d.assign(pr.soft.begin(), pr.soft.end());
    pr.ref_in.soft_labels = pr.soft_d.data();
    if (ref) {  // R_s = L_s − k_s: margins k_a − k_b, 0 for the identical sequences 0 and 2
      ref_result base;
      REQUIRE(run_reference(pr.ref_in, c.opt, false, base) == status::success);
      const double k[5] = {0.0, 3.0, 0.0, 6.0, 9.0};
      pr.ref.clear();
      for (int64_t s = 0; s < pr.s; ++s)
        pr.ref.push_back(static_cast<float>(base.seq_logps[static_cast<size_t>(s)] - k[s]));
      pr.ref_d.assign(pr.ref.begin(), pr.ref.end());
      pr.ref_in.ref_logps = pr.ref_d.data();
      REQUIRE(pr.ref[0] == pr.ref[2]);
    }
    ref_result want;
    REQUIRE(run_reference(pr.ref_in, c.opt, false, want) == status::success);
    int64_t wins = 0;
    for (int64_t i = 0; i < pr.p; ++i) {
      const double h = want.margins[static_cast<size_t>(i)];
      if (i < 4) {
        REQUIRE(h == 0.0);  // the setup's ties are exact in the reference too
      } else {
        REQUIRE(std::fabs(h) > 0.5);  // far beyond any float error: the sign is certain
        if (h > 0) ++wins;
      }
    }
    REQUIRE(wins > 0);
    REQUIRE(wins < pr.p - 4);

    device_logits z(pr);
    dmem grad_mem(static_cast<size_t>(pr.n * pr.v * es));
    poison(grad_mem);
    gpu_result r = run_train(pr, z.ptr, pr.ld, grad_mem.get(), pr.v, 0);
    r.grad_ld = pr.v;
    r.grad = download<uint8_t>(grad_mem.get(), grad_mem.bytes());
    r.logits = download<uint8_t>(z.ptr, pr.logits.size());
    compare(pr, r);
    CHECK(r.seq_logps[0] == r.seq_logps[2]);  // the identical sequences: bitwise equal L
    const double expected = static_cast<double>(wins) / static_cast<double>(pr.p);
    CHECK(r.stats.rewards_accuracies == expected);
    CHECK(want.stats.rewards_accuracies == expected);
  }
}

// ---------------------------------------------------------------------------
// Fault: accepting ld = V − 1. Elsewhere ld < V is only tried where the
// gradient's stride (grad_ld = 0 means ld) is rejected too; here the gradient
// has its own valid stride, so only the leading-dimension check can reject.
// ld = V itself is accepted and correct (the same calls, checked).
TEST_CASE("ld = V - 1 is rejected by the leading-dimension check alone", "[gpu][small][gaps]") {
  case_config c;
  c.dtype = gc::dtype::float16;
  c.vocab = 37;
  c.seq_lens = {5, 7, 6, 4};
  c.opt.loss.type = loss_type::gdpo;
  c.seed = 15401;
  const problem pr = make(c);
  INFO(describe(c));
  device_logits z(pr);  // [N, V]: large enough for either stride
  dmem grad_mem(static_cast<size_t>(pr.n * pr.v * 2));
  poison(grad_mem);
  for (int64_t ld : {pr.v - 1, pr.v}) {
    INFO("ld = " << ld);
    const status want = ld < pr.v ? status::invalid_stride : status::success;
    device_io io(pr);
    // train_step: the size query and the call.
    gc::train_args t = io.train(pr, z.ptr, ld, grad_mem.get(), pr.v);
    size_t bytes = 0;
    CHECK(gc::train_step(nullptr, bytes, t, c.opt) == want);
    t.grad_logits = nullptr;  // no gradient at all: still rejected
    t.grad_ld = pr.v;
    CHECK(gc::train_step(nullptr, bytes, t, c.opt) == want);
    gc::logps_args l;
    l.tokens = io.tokens(pr, z.ptr, ld);
    l.seq_logps = io.seq_logps.get<float>();
    CHECK(gc::sequence_logps(nullptr, bytes, l, c.opt) == want);
    gc::grad_args g;
    g.tokens = io.tokens(pr, z.ptr, ld);
    g.lse = io.lse.get<float>();
    g.grad_seq_logps = io.grad_seq.get<float>();
    g.grad_logits = grad_mem.get();
    g.grad_ld = pr.v;
    CHECK(gc::logits_grad(nullptr, bytes, g, c.opt) == want);
    // The real calls (with a workspace of a valid problem's size) stop at
    // the same check.
    size_t ok_bytes = 0;
    gc::train_args valid = io.train(pr, z.ptr, pr.v, grad_mem.get(), pr.v);
    REQUIRE(gc::train_step(nullptr, ok_bytes, valid, c.opt) == status::success);
    tight_workspace ws(ok_bytes, 0);
    CUDA_REQUIRE(cudaDeviceSynchronize());
    size_t given = ok_bytes;
    if (want != status::success) {
      CHECK(gc::train_step(ws.ptr, given, io.train(pr, z.ptr, ld, grad_mem.get(), pr.v), c.opt) == want);
      CHECK(gc::sequence_logps(ws.ptr, given, l, c.opt) == want);
      CHECK(gc::logits_grad(ws.ptr, given, g, c.opt) == want);
    }
  }
  // ld = V: correct results.
  gpu_result r = run_train(pr, z.ptr, pr.v, grad_mem.get(), pr.v, 0);
  r.grad_ld = pr.v;
  r.grad = download<uint8_t>(grad_mem.get(), grad_mem.bytes());
  r.logits = download<uint8_t>(z.ptr, pr.logits.size());
  compare(pr, r);
}

// ---------------------------------------------------------------------------
// Fault: removing block_reduce's second barrier, which lets a caller reuse
// `smem` right after the call (its comment allows it; no kernel of the
// library does it today). The kernel reduces twice back to back on one
// buffer, then one thread overwrites the buffer at once. On the emulator the
// thread that completes a barrier runs on at once, and the first thread of
// the next round runs before the rest, so without the barrier thread 0 or
// the last thread (either, in both orders) overwrites smem before the others
// have read it. Back to back alone (writer −1) is not enough there: the next
// call writes only after five shuffles, which every thread reaches after its
// read (dev/emu/README.md). On a GPU that is a race for racecheck ([race]);
// with OS threads, for ThreadSanitizer.
namespace {

template <int BLOCK_SIZE>
__global__ void reduce_twice_kernel(const long long* in, long long* out, int writer) {
  namespace d = geopref::cuda::detail;
  __shared__ long long smem[BLOCK_SIZE / 32];
  const long long v = in[threadIdx.x];
  const long long r1 = d::block_reduce<BLOCK_SIZE>(v, d::plus{}, 0LL, smem);
  long long r2 = d::block_reduce<BLOCK_SIZE>(3 * v + 1, d::plus{}, 0LL, smem);
  if (writer >= 0) {  // uniform over the block
    if (static_cast<int>(threadIdx.x) == writer)
      for (int w = 0; w < BLOCK_SIZE / 32; ++w) smem[w] = -1000000;  // reuse by the caller
    __syncthreads();
    r2 += smem[threadIdx.x % (BLOCK_SIZE / 32)];  // the reuse is read, so it is not optimised away
  }
  out[2 * threadIdx.x] = r1;
  out[2 * threadIdx.x + 1] = r2;
}

}  // namespace

TEST_CASE("block_reduce twice on one shared buffer, then the caller reuses it", "[gpu][small][race][gaps]") {
  constexpr int B = geopref::cuda::detail::BLOCK;
  std::vector<long long> in(B);
  std::mt19937_64 rng(15501);
  long long s1 = 0, s2 = 0;
  for (auto& x : in) {
    x = static_cast<long long>(rng() % 2001) - 1000;
    s1 += x;
    s2 += 3 * x + 1;
  }
  dmem d_in = upload(in);
  for (int writer : {0, B - 1, -1}) {
    INFO("writer thread " << writer);
    dmem d_out(2 * B * sizeof(long long));
    poison(d_out);
    geopref::cuda::detail::launch(reduce_twice_kernel<B>, 1, B, nullptr, d_in.get<long long>(),
                                  d_out.get<long long>(), writer);
    CUDA_REQUIRE(cudaGetLastError());
    const auto out = download<long long>(d_out.get(), 2 * B);
    const long long want2 = s2 + (writer >= 0 ? -1000000 : 0);
    int bad = 0;
    for (int t = 0; t < B; ++t)
      if (out[2 * t] != s1 || out[2 * t + 1] != want2) ++bad;
    CHECK(bad == 0);  // integer sums: exact in any order
  }
}

// ---------------------------------------------------------------------------
// Fault: breaking the backward's split-row prologue (e.g. every split doing
// the prologue, or none). Rows split across blocks with a scalar prologue
// that varies by row (misaligned base, ld·4 not a multiple of 16), the
// gradient in place (a prologue element handled twice reads a gradient
// instead of a logit) and the 16-byte path. The same through logits_grad.
// The [vocab] cases that also reach this are slow, so the sanitizer build
// never ran them.
TEST_CASE("split rows, misaligned row starts, gradient in place", "[gpu][small][gaps]") {
  uint64_t seed = 15600;
  for (gc::dtype dt : {gc::dtype::float32, gc::dtype::bfloat16}) {
    case_config c;
    c.dtype = dt;
    c.vocab = dt == gc::dtype::float32 ? 4101 : 8203;  // 1025 vectors: 2 splits at this N
    c.pad = dt == gc::dtype::float32 ? 2 : 3;          // row starts move by 8 / 6 bytes per row
    c.misalign = 1;
    c.seq_lens = {3, 2, 4, 1};
    c.extra_rows = 1;
    c.weights = true;
    c.in_place = true;
    c.opt.loss.type = loss_type::gdpo;
    c.seed = ++seed;
    INFO(describe(c));
    REQUIRE(geopref::cuda::detail::choose_splits(11, c.vocab, dtype_bytes(dt)) == 2);
    // train_step against the reference; then logits_grad in place over the
    // same layout, from its lse and g_s, against its gradient bit for bit.
    const problem pr = make(c);
    const gpu_result fused = run_compared(pr);
    device_io io(pr);
    dmem lse = upload(fused.lse), gs = upload(fused.grad_seq);
    device_logits z(pr);
    gc::grad_args a = grad_args_of(io.tokens(pr, z.ptr, pr.ld), lse, gs, z.ptr, 0);  // in place
    CHECK(GEOPREF_RUN_TIGHT(gc::logits_grad, a, c.opt) == status::success);
    CHECK(same_bits(download<uint8_t>(z.ptr, pr.logits.size()), fused.grad));
  }
}
