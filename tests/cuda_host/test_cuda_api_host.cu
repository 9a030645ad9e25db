// tests/cuda_host/test_cuda_api_host.cu — the launch API's host side, without a
// GPU: the workspace query and every check that must fail before anything is
// enqueued. No call here reaches the CUDA runtime (a rejected call returns
// before its first CUDA call), so the pointers may be fake addresses.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>

#include "geopref/cuda/geopref.cuh"

namespace gc = geopref::cuda;
using geopref::status;

namespace {

// Fake device addresses: never dereferenced by a rejected call.
template <class T = void>
T* fake(uintptr_t a) {
  return reinterpret_cast<T*>(a);
}

gc::train_args valid_args() {
  gc::train_args a;
  a.tokens.logits = fake(0x100000);
  a.tokens.logits_dtype = gc::dtype::bfloat16;
  a.tokens.n_rows = 40;
  a.tokens.vocab = 1000;
  a.tokens.ld = 1000;
  a.tokens.labels = fake(0x200000);
  a.tokens.offsets = fake(0x300000);
  a.tokens.n_seqs = 4;
  a.n_pairs = 2;
  a.grad_logits = fake(0x400000);
  return a;
}

status query(const gc::train_args& a, const geopref::options& o = {}, size_t* bytes = nullptr) {
  size_t b = 0;
  const status s = gc::train_step(nullptr, b, a, o);
  if (bytes != nullptr) *bytes = b;
  return s;
}

/// A real call with a fake workspace that is one byte too small: every
/// argument check runs, and a call that passes them all stops at the size.
status call(const gc::train_args& a, const geopref::options& o = {}) {
  size_t b = 0;
  const status q = gc::train_step(nullptr, b, a, o);
  if (q != status::success) return q;
  size_t given = b - 1;
  return gc::train_step(fake(0x800000), given, a, o);
}

}  // namespace

TEST_CASE("workspace query", "[cuda][api]") {
  size_t b1 = 0, b2 = 0, b3 = 0;
  gc::train_args a = valid_args();
  REQUIRE(query(a, {}, &b1) == status::success);
  CHECK(b1 > 0);
  REQUIRE(query(a, {}, &b2) == status::success);
  CHECK(b1 == b2);
  a.tokens.n_rows = 4000;
  REQUIRE(query(a, {}, &b3) == status::success);
  CHECK(b3 > b1);
  // The query checks sizes but not buffers.
  a.tokens.logits = nullptr;
  CHECK(query(a) == status::success);
  gc::logps_args l;
  l.tokens = valid_args().tokens;
  size_t lb = 0;
  CHECK(gc::sequence_logps(nullptr, lb, l, {}) == status::success);
  CHECK(lb > 0);
  CHECK(lb <= b1);  // no pair buffers
}

TEST_CASE("a valid call stops only at a too-small workspace", "[cuda][api]") {
  CHECK(call(valid_args()) == status::workspace_too_small);
  gc::logps_args l;
  l.tokens = valid_args().tokens;
  l.seq_logps = fake<float>(0x500000);
  size_t b = 0;
  REQUIRE(gc::sequence_logps(nullptr, b, l, {}) == status::success);
  size_t given = b - 1;
  CHECK(gc::sequence_logps(fake(0x800000), given, l, {}) == status::workspace_too_small);
}

TEST_CASE("host-checkable errors are returned at once", "[cuda][api]") {
  using geopref::loss_type;
  auto with = [](auto edit) {
    gc::train_args a = valid_args();
    geopref::options o;
    edit(a, o);
    return call(a, o);
  };
  CHECK(with([](auto& a, auto&) { a.tokens.n_rows = -1; }) == status::invalid_shape);
  CHECK(with([](auto& a, auto&) { a.tokens.n_seqs = -1; }) == status::invalid_shape);
  CHECK(with([](auto& a, auto&) { a.n_pairs = -1; }) == status::invalid_shape);
  CHECK(with([](auto& a, auto&) { a.tokens.vocab = 0; }) == status::invalid_shape);
  CHECK(with([](auto& a, auto&) { a.tokens.vocab = int64_t{1} << 31; a.tokens.ld = a.tokens.vocab; }) ==
        status::invalid_shape);
  CHECK(with([](auto& a, auto&) { a.tokens.ld = 999; }) == status::invalid_stride);
  CHECK(with([](auto& a, auto&) { a.grad_ld = 999; }) == status::invalid_stride);
  CHECK(with([](auto& a, auto&) { a.tokens.logits = nullptr; }) == status::null_pointer);
  CHECK(with([](auto& a, auto&) { a.tokens.labels = nullptr; }) == status::null_pointer);
  CHECK(with([](auto& a, auto&) { a.tokens.offsets = nullptr; }) == status::null_pointer);
  CHECK(with([](auto& a, auto&) { a.tokens.logits = fake(0x100001); }) == status::misaligned_pointer);
  CHECK(with([](auto& a, auto&) { a.tokens.labels = fake(0x200004); }) == status::misaligned_pointer);
  CHECK(with([](auto& a, auto&) { a.soft_labels = fake<float>(0x600002); }) ==
        status::misaligned_pointer);
  CHECK(with([](auto& a, auto&) { a.tokens.logits_dtype = static_cast<gc::dtype>(9); }) ==
        status::unsupported_dtype);
  CHECK(with([](auto& a, auto&) { a.tokens.label_type = static_cast<gc::index_type>(9); }) ==
        status::unsupported_dtype);
  CHECK(with([](auto& a, auto&) { a.tokens.n_seqs = 5; }) == status::pair_count_mismatch);
  CHECK(with([](auto& a, auto&) { a.tokens.n_seqs = 5; a.pairs = fake<int64_t>(0x700000); }) ==
        status::workspace_too_small);  // explicit pairs: any S
  CHECK(with([](auto& a, auto&) { a.grad_loss = NAN; }) == status::invalid_upstream_grad);
  CHECK(with([](auto& a, auto&) { a.grad_loss = INFINITY; }) == status::invalid_upstream_grad);
  CHECK(with([](auto&, auto& o) { o.loss.beta = 0.0; }) == status::invalid_beta);
  CHECK(with([](auto&, auto& o) { o.loss.type = static_cast<loss_type>(99); }) == status::invalid_loss);
  CHECK(with([](auto&, auto& o) { o.loss.type = loss_type::robust; o.loss.epsilon = 0.5; }) ==
        status::invalid_epsilon);
  CHECK(with([](auto&, auto& o) { o.reduce = geopref::reduction::normalizer; }) ==
        status::invalid_reduction);
  CHECK(with([](auto& a, auto& o) {
          o.loss.type = loss_type::simpo;
          a.ref_logps = fake<float>(0x600000);
        }) == status::reference_not_allowed);
}

TEST_CASE("the gradient may alias the logits only exactly in place", "[cuda][api]") {
  auto with = [](auto edit) {
    gc::train_args a = valid_args();
    edit(a);
    return call(a);
  };
  // Exactly in place: accepted (stops at the workspace size).
  CHECK(with([](auto& a) { a.grad_logits = const_cast<void*>(a.tokens.logits); }) ==
        status::workspace_too_small);
  CHECK(with([](auto& a) {
          a.grad_logits = const_cast<void*>(a.tokens.logits);
          a.grad_ld = a.tokens.ld;
        }) == status::workspace_too_small);
  // Shifted by one element, another stride, or another dtype over the same memory.
  CHECK(with([](auto& a) { a.grad_logits = fake(0x100002); }) == status::overlapping_buffers);
  CHECK(with([](auto& a) {
          a.grad_logits = const_cast<void*>(a.tokens.logits);
          a.tokens.ld = 1024;
          a.grad_ld = 1000;
        }) == status::overlapping_buffers);
  CHECK(with([](auto& a) {
          a.grad_logits = const_cast<void*>(a.tokens.logits);
          a.grad_float32 = true;
        }) == status::overlapping_buffers);
  // Adjacent but disjoint: fine. 40 rows x 1000 bf16 = 80000 bytes.
  CHECK(with([](auto& a) { a.grad_logits = fake(0x100000 + 80000); }) == status::workspace_too_small);
  CHECK(with([](auto& a) { a.grad_logits = fake(0x100000 + 79998); }) == status::overlapping_buffers);
  CHECK(with([](auto& a) { a.grad_logits = fake(0x100001 + 80000); }) == status::misaligned_pointer);
}

TEST_CASE("buffers overlapping the workspace are rejected", "[cuda][api]") {
  // A full-size fake workspace: an overlap must be rejected before the first
  // CUDA call (a call that got past the checks would fail with cuda_error).
  constexpr uintptr_t WS = 0x800000;  // 256-aligned: the used part starts here
  const gc::train_args base = valid_args();
  size_t b = 0;
  REQUIRE(query(base, {}, &b) == status::success);
  auto train = [&](auto edit) {
    gc::train_args a = base;
    edit(a);
    size_t given = b;
    return gc::train_step(fake(WS), given, a, {});
  };
  const size_t used = b - 255;  // the request is the layout plus 255 bytes to align the base
  const uintptr_t grad_bytes = 40 * 1000 * 2;
  CHECK(train([](auto& a) { a.grad_logits = fake(WS + 256); }) == status::overlapping_buffers);
  CHECK(train([&](auto& a) { a.grad_logits = fake(WS + 2 - grad_bytes); }) == status::overlapping_buffers);
  CHECK(train([&](auto& a) { a.grad_logits = fake(WS + used - 2); }) == status::overlapping_buffers);
  CHECK(train([&](auto& a) {
          a.grad_logits = fake(WS + 512);
          a.grad_float32 = true;
        }) == status::overlapping_buffers);
  CHECK(train([](auto& a) { a.tokens.logits = fake(WS + 1024); }) == status::overlapping_buffers);
  CHECK(train([](auto& a) {  // in place, inside the workspace
          a.tokens.logits = fake(WS + 1024);
          a.grad_logits = fake(WS + 1024);
        }) == status::overlapping_buffers);

  gc::logps_args l;
  l.tokens = base.tokens;
  l.seq_logps = fake<float>(0x500000);
  size_t lb = 0;
  REQUIRE(gc::sequence_logps(nullptr, lb, l, {}) == status::success);
  l.tokens.logits = fake(WS + 2);
  CHECK(gc::sequence_logps(fake(WS), lb, l, {}) == status::overlapping_buffers);

  gc::grad_args g;
  g.tokens = base.tokens;
  g.lse = fake<float>(0x500000);
  g.grad_seq_logps = fake<float>(0x600000);
  g.grad_logits = fake(0x400000);
  size_t gb = 0;
  REQUIRE(gc::logits_grad(nullptr, gb, g, {}) == status::success);
  auto grad = [&](auto edit) {
    gc::grad_args a = g;
    edit(a);
    size_t given = gb;
    return gc::logits_grad(fake(WS), given, a, {});
  };
  CHECK(grad([](auto& a) { a.grad_logits = fake(WS); }) == status::overlapping_buffers);
  CHECK(grad([](auto& a) { a.lse = fake<float>(WS + 4); }) == status::overlapping_buffers);
  CHECK(grad([](auto& a) { a.grad_seq_logps = fake<float>(WS + 8); }) == status::overlapping_buffers);
}

TEST_CASE("sequence_logps host checks", "[cuda][api]") {
  gc::logps_args l;
  l.tokens = valid_args().tokens;
  size_t b = 0;
  REQUIRE(gc::sequence_logps(nullptr, b, l, {}) == status::success);
  size_t given = b;
  CHECK(gc::sequence_logps(fake(0x800000), given, l, {}) == status::null_pointer);  // seq_logps
  l.seq_logps = fake<float>(0x500002);
  CHECK(gc::sequence_logps(fake(0x800000), given, l, {}) == status::misaligned_pointer);
  l.tokens.ld = 10;
  CHECK(gc::sequence_logps(nullptr, b, l, {}) == status::invalid_stride);
}

TEST_CASE("device_status rejects null arguments", "[cuda][api]") {
  status s = status::success;
  CHECK(gc::device_status(nullptr, nullptr, &s) == status::null_pointer);
  CHECK(gc::device_status(fake(0x800000), nullptr, nullptr) == status::null_pointer);
}
