// kernels/c_api_common.cuh — internal to kernels/ (never installed): what the
// two translation units of the C ABI (c_api.cu, and c_api_linear.cu, which
// alone links cuBLAS) share: reading an argument struct by its struct_size
// (ABI 1.0, geopref/c_api.h), the C-to-C++ conversion generated from one field
// list per C struct, and the shape of an entry.
//
// Each C struct has a field list, X(c_member, cpp_member): every member of the
// C struct after struct_size, in order, with the C++ member it becomes (a path
// such as tokens.logit_transform where the C++ side nests it). From the list
//   - a static_assert that the members tile the C struct: each starts where the
//     previous one ends (after its alignment padding) and the last ends the
//     struct, so the list names every member of the C struct, in its order;
//   - from_c(const C&, Cpp*): one conversion per member, chosen by the two
//     types (the same type: assigned; an int to an enum: checked, then cast;
//     an int to bool; a block: its own list), the first failure's status.
// A member added to a C struct without its list entry fails to compile here.
// (The C++ side is not enumerable: a C++ member no list names keeps its
// default, which is what the C ABI gives for a field it does not carry.)
#pragma once

#include <cstddef>
#include <cstring>
#include <type_traits>

#include "geopref/c_api.h"
#include "geopref/c_options.hpp"
#include "geopref/cuda/args.cuh"
#include "geopref/cuda/vocab_args.cuh"
#include "geopref/options.hpp"
#include "geopref/status.hpp"

namespace geopref::c_abi {

/// Where a member of a C struct lies.
struct field_span {
  std::size_t offset, size, align;
};

constexpr std::size_t align_up(std::size_t n, std::size_t a) { return (n + a - 1) / a * a; }

/// True when the members tile [start, total): no gap but alignment padding.
template <std::size_t N>
constexpr bool tiles(const field_span (&f)[N], std::size_t start, std::size_t total,
                     std::size_t align) {
  std::size_t end = start;
  for (std::size_t k = 0; k < N; ++k) {
    if (f[k].offset != align_up(end, f[k].align)) return false;
    end = f[k].offset + f[k].size;
  }
  return align_up(end, align) == total;
}

// ---- Leaf conversions, by the C member's type and the C++ member's.
template <class T>
status from_c(const T& c, T* o) {
  *o = c;
  return status::success;
}
inline status from_c(int c, bool* o) {
  *o = c != 0;
  return status::success;
}
inline status from_c(int c, cuda::dtype* o) {
  if (c < GEOPREF_FLOAT32 || c > GEOPREF_BFLOAT16) return status::unsupported_dtype;
  *o = static_cast<cuda::dtype>(c);
  return status::success;
}
inline status from_c(int c, cuda::index_type* o) {
  if (c < GEOPREF_INT32 || c > GEOPREF_INT64) return status::unsupported_dtype;
  *o = static_cast<cuda::index_type>(c);
  return status::success;
}
// The device structs cross as they are (c_api.cu checks their layouts).
inline status from_c(geopref_metrics* c, geopref::metrics** o) {
  *o = reinterpret_cast<geopref::metrics*>(c);
  return status::success;
}
inline status from_c(geopref_metric_sums* c, geopref::metric_sums** o) {
  *o = reinterpret_cast<geopref::metric_sums*>(c);
  return status::success;
}
inline status from_c(geopref_vocab_record* c, cuda::vocab_record** o) {
  *o = reinterpret_cast<cuda::vocab_record*>(c);
  return status::success;
}
inline status from_c(const geopref_vocab_record* c, const cuda::vocab_record** o) {
  *o = reinterpret_cast<const cuda::vocab_record*>(c);
  return status::success;
}

// ---- The defaults an *_args_init sets. First by each member's type: a
// scalar or pointer stays zero (the struct is zeroed first); an embedded block
// has its own init_member overload (the logit transform and the vocab slice
// below; the blocks of each translation unit next to their GEOPREF_C_BLOCK),
// and a block without one visible where the struct's GEOPREF_C_ARGS stands
// fails to compile rather than keeping zeros. Then the struct's own defaults,
// init_own(C*) (the train arguments' grad_loss = 1): a hook by name, not by
// type, so a default for one double member never lands on another; its
// overload must stand before the struct's GEOPREF_C_ARGS (test_c_api_abi's
// check_defaults compares every init with the defaults c_api.h names).
template <class T>
std::enable_if_t<std::is_scalar_v<T>> init_member(T*) {}
template <class C>
void init_own(C*) {}

#define GEOPREF_C_SPAN(c_member, cpp_member) \
  field_span{offsetof(C, c_member), sizeof(C::c_member), alignof(decltype(C::c_member))},
#define GEOPREF_C_INIT(c_member, cpp_member) init_member(&c->c_member);
#define GEOPREF_C_FROM(c_member, cpp_member) \
  if (s == status::success) s = from_c(c.c_member, &o->cpp_member);

/// A frozen block (embedded, no struct_size): its layout check and from_c.
#define GEOPREF_C_BLOCK(CType, CppType, LIST)                                                 \
  struct CType##_layout {                                                                     \
    using C = CType;                                                                          \
    static constexpr field_span spans[] = {LIST(GEOPREF_C_SPAN)};                             \
  };                                                                                          \
  static_assert(tiles(CType##_layout::spans, 0, sizeof(CType), alignof(CType)),               \
                #CType "'s members differ from its field list " #LIST);                       \
  inline status from_c(const CType& c, CppType* o) {                                          \
    status s = status::success;                                                               \
    LIST(GEOPREF_C_FROM)                                                                      \
    return s;                                                                                 \
  }

/// What read_args knows of an argument struct C (specialised by GEOPREF_C_ARGS,
/// inside namespace geopref::c_abi): its C++ twin `cpp`, init (its public init
/// function), size_1_0, the spans of its members, and convert (the
/// conversion of a whole struct of this library's layout).
template <class C>
struct c_args {};

/// An argument struct (struct_size first, then the list): its layout check,
/// from_c, its init function (CType##_init, defined by GEOPREF_C_ENTRY) and
/// its ABI 1.0 size.
#define GEOPREF_C_ARGS(CType, CppType, LIST, SIZE_1_0)                                        \
  template <>                                                                                 \
  struct c_args<CType> {                                                                      \
    using C = CType;                                                                          \
    using cpp = CppType;                                                                      \
    static constexpr std::size_t size_1_0 = SIZE_1_0;                                         \
    static constexpr field_span spans[] = {LIST(GEOPREF_C_SPAN)};                             \
    static void init(C* c) { CType##_init(c); }                                               \
    static void init_members(C* c) { LIST(GEOPREF_C_INIT) init_own(c); }                      \
    static status convert(const C& c, cpp* o) {                                               \
      status s = status::success;                                                             \
      LIST(GEOPREF_C_FROM)                                                                    \
      return s;                                                                               \
    }                                                                                         \
  };                                                                                          \
  static_assert(offsetof(CType, struct_size) == 0, #CType " must start with struct_size");    \
  static_assert(tiles(c_args<CType>::spans, sizeof(std::size_t), sizeof(CType),               \
                      alignof(CType)),                                                        \
                #CType "'s members differ from its field list " #LIST);                       \
  static_assert(SIZE_1_0 <= sizeof(CType));

// Argument structs of both translation units with the same members (the
// rows, or the train arguments pointed to, are each one's own type): one list
// for both (GEOPREF_C_ARGS checks it against each struct).
#define GEOPREF_C_TOKEN_LOGPS_ARGS_FIELDS(X)                                       \
  X(rows, rows) X(token_logps, token_logps) X(lse, lse) X(entropy, entropy)       \
  X(logit_transform, rows.logit_transform) X(log_sum_sq_probs, log_sum_sq_probs)  \
  X(mean_logits, mean_logits) X(is_top1, is_top1)
#define GEOPREF_C_VOCAB_TRAIN_ARGS_FIELDS(X) X(train, train) X(slice, slice) X(records, records)

/// What every *_args_init does: nothing for NULL; otherwise zero *args, set
/// its struct_size to this layout's and its defaults (init_member, init_own).
template <class C>
void init_args(C* args) {
  if (args == nullptr) return;
  *args = C{};
  args->struct_size = sizeof *args;
  c_args<C>::init_members(args);
}

/// The caller's argument struct as this library's layout, reading only the
/// struct_size bytes the caller has: *local starts with the defaults of the
/// struct's init function and takes the first min(struct_size, sizeof(C))
/// bytes. struct_size must be at least the ABI 1.0 size and either end where
/// a member of the layout this library knows starts (an older layout: the
/// members from there on keep their defaults) or go past the layout with zero
/// bytes only (a newer caller that left its newer fields at their zero
/// defaults); anything else is invalid_struct_size.
template <class C>
status read_args(const C* user, C* local) {
  using traits = c_args<C>;
  traits::init(local);
  const std::size_t n = user->struct_size;
  if (n < traits::size_1_0) return status::invalid_struct_size;
  if (n < sizeof(C)) {
    bool at_member = false;
    for (const field_span& f : traits::spans) at_member = at_member || f.offset == n;
    if (!at_member) return status::invalid_struct_size;
  }
  std::memcpy(static_cast<void*>(local), user, n < sizeof(C) ? n : sizeof(C));
  const unsigned char* bytes = reinterpret_cast<const unsigned char*>(user);
  for (std::size_t k = sizeof(C); k < n; ++k)
    if (bytes[k] != 0) return status::invalid_struct_size;
  local->struct_size = sizeof(C);
  return status::success;
}

/// An argument struct by pointer, read by its own struct_size, converted: what
/// every entry does with its arguments, and a vocab-parallel step with the
/// train arguments it points to (required).
template <class C>
status from_c(const C* c, typename c_args<C>::cpp* o) {
  if (c == nullptr) return status::null_pointer;
  C local;
  const status s = read_args(c, &local);
  return s == status::success ? c_args<C>::convert(local, o) : s;
}

// ---- The blocks and argument structs both translation units use.

// geopref_options: GEOPREF_OPTIONS_FIELDS (geopref/c_options.hpp) checks its
// members' types and converts them; the list's order is not the C order, so
// the members are listed here again in the C order, for the layout check and
// for read_args to know where each begins (a field appended to the options
// fails the check until it is listed here, at the end).
#define GEOPREF_C_OPTIONS_MEMBERS(X)                                                           \
  X(loss, ) X(beta, ) X(alpha, ) X(gamma, ) X(epsilon, ) X(tau, ) X(reduction, )              \
  X(normalizer, ) X(average_logps, ) X(ignore_index, ) X(bco_delta, ) X(transform, )          \
  X(f_alpha, ) X(geometric, ) X(n_terms, ) X(terms, ) X(term_weights, ) X(nll_tokens, )       \
  X(nll_weight, )
template <>
struct c_args<geopref_options> {
  using C = geopref_options;
  using cpp = geopref::options;
  static constexpr std::size_t size_1_0 = GEOPREF_OPTIONS_SIZE_1_0;
  static constexpr field_span spans[] = {GEOPREF_C_OPTIONS_MEMBERS(GEOPREF_C_SPAN)};
  static void init(geopref_options* c) { geopref_options_init(c); }
  static status convert(const geopref_options& c, cpp* o) { return geopref::from_c(c, o); }
};
static_assert(tiles(c_args<geopref_options>::spans, sizeof(std::size_t), sizeof(geopref_options),
                    alignof(geopref_options)),
              "geopref_options's members differ from GEOPREF_C_OPTIONS_MEMBERS");

/// The C options as C++ ones, read by struct_size, then one conversion per
/// field of GEOPREF_OPTIONS_FIELDS (out-of-range enum values map to the status
/// the C++ API gives for an unknown value, never to a blind cast).
inline status to_options(const geopref_options* c, geopref::options* o) { return from_c(c, o); }

// geopref_logit_transform is geopref::logit_transform field for field: both
// come from GEOPREF_LOGIT_TRANSFORM_FIELDS, the C struct by hand.
// Its C list is that list (X pasted onto an adapter from the list's five
// arguments to X's two).
#define GEOPREF_C_LOGIT_TRANSFORM_FIELDS(X) GEOPREF_LOGIT_TRANSFORM_FIELDS(GEOPREF_LT_##X)
#define GEOPREF_LT_GEOPREF_C_SPAN(type, name, def, flag, doc) GEOPREF_C_SPAN(name, name)
#define GEOPREF_LT_GEOPREF_C_FROM(type, name, def, flag, doc) GEOPREF_C_FROM(name, name)
GEOPREF_C_BLOCK(geopref_logit_transform, geopref::logit_transform,
                GEOPREF_C_LOGIT_TRANSFORM_FIELDS)
#define GEOPREF_X(type, name, def, flag, doc)                                          \
  static_assert(std::is_same_v<decltype(geopref_logit_transform::name), type>,          \
                "geopref_logit_transform." #name " must have the field list's type");
GEOPREF_LOGIT_TRANSFORM_FIELDS(GEOPREF_X)
#undef GEOPREF_X

/// The identity transform (the list's defaults), which every *_args_init sets.
inline geopref_logit_transform default_logit_transform() {
  geopref_logit_transform c;
#define GEOPREF_X(type, name, def, flag, doc) c.name = def;
  GEOPREF_LOGIT_TRANSFORM_FIELDS(GEOPREF_X)
#undef GEOPREF_X
  return c;
}

#define GEOPREF_C_VOCAB_SLICE_FIELDS(X) X(begin, begin) X(total, total) X(rank, rank) X(n_ranks, n_ranks)
GEOPREF_C_BLOCK(geopref_vocab_slice, cuda::vocab_slice, GEOPREF_C_VOCAB_SLICE_FIELDS)

inline void init_member(geopref_logit_transform* t) { *t = default_logit_transform(); }
inline void init_member(geopref_vocab_slice* s) { s->n_ranks = cuda::vocab_slice{}.n_ranks; }

/// The shape of every C entry that takes options: null checks, the C structs
/// (read by their struct_size) to C++ ones, the C++ entry, its status as an int.
/// (The entry's type follows from CArgs, so an overloaded entry resolves.)
template <class CArgs, class Args = typename c_args<CArgs>::cpp>
geopref_status call(status (*entry)(void*, size_t&, const std::common_type_t<Args>&,
                                    const geopref::options&, cudaStream_t),
                    void* workspace, size_t* bytes, const CArgs* args, const geopref_options* opt,
                    cudaStream_t stream) {
  if (bytes == nullptr || args == nullptr || opt == nullptr)
    return static_cast<int>(status::null_pointer);
  geopref::options o;
  Args a;
  status s = to_options(opt, &o);
  if (s == status::success) s = from_c(args, &a);
  if (s == status::success) s = entry(workspace, *bytes, a, o, stream);
  return static_cast<int>(s);
}

/// The same for the per-token primitive's entries, which take no options.
template <class CArgs, class Args = typename c_args<CArgs>::cpp>
geopref_status call(status (*entry)(void*, size_t&, const std::common_type_t<Args>&,
                                    cudaStream_t),
                    void* workspace, size_t* bytes, const CArgs* args, cudaStream_t stream) {
  if (bytes == nullptr || args == nullptr) return static_cast<int>(status::null_pointer);
  Args a;
  status s = from_c(args, &a);
  if (s == status::success) s = entry(workspace, *bytes, a, stream);
  return static_cast<int>(s);
}

/// A C entry `name` that takes options, with the C++ entry `cpp_entry` over
/// `call`; its size query name##_workspace_size: the entry with a NULL
/// workspace and stream; and the init function of its argument struct,
/// CArgs##_init (init_args). (geopref/c_api.h declares all three: a definition
/// whose signature differs from the declaration fails to compile.)
#define GEOPREF_C_ENTRY(name, CArgs, cpp_entry)                                                \
  void CArgs##_init(CArgs* args) { geopref::c_abi::init_args(args); }                           \
  geopref_status name(void* workspace, size_t* workspace_bytes, const CArgs* args,              \
                      const geopref_options* opt, geopref_stream_t stream) {                    \
    return geopref::c_abi::call(cpp_entry, workspace, workspace_bytes, args, opt, stream);      \
  }                                                                                              \
  geopref_status name##_workspace_size(const CArgs* args, const geopref_options* opt,           \
                                       size_t* workspace_bytes) {                                \
    return name(nullptr, workspace_bytes, args, opt, nullptr);                                   \
  }

/// The same for the per-token primitive's entries, which take no options.
#define GEOPREF_C_TOKEN_ENTRY(name, CArgs, cpp_entry)                                          \
  void CArgs##_init(CArgs* args) { geopref::c_abi::init_args(args); }                           \
  geopref_status name(void* workspace, size_t* workspace_bytes, const CArgs* args,              \
                      geopref_stream_t stream) {                                                 \
    return geopref::c_abi::call(cpp_entry, workspace, workspace_bytes, args, stream);           \
  }                                                                                              \
  geopref_status name##_workspace_size(const CArgs* args, size_t* workspace_bytes) {            \
    return name(nullptr, workspace_bytes, args, nullptr);                                        \
  }

}  // namespace geopref::c_abi
