// geopref/c_options.hpp — geopref_options (the C ABI's struct, c_api.h) and
// geopref::options field for field, from GEOPREF_OPTIONS_FIELDS: the checks
// that the C struct has every field of the list with the C type of the
// list's type, in the list's order and nothing else, and the conversions
// both ways, one generated assignment per field. Host-only C++ over the C
// header: the C ABI's implementation (kernels/c_api.cu) and the PyTorch
// package's CUDA operators (bindings/torch/csrc) share it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "geopref/c_api.h"
#include "geopref/options.hpp"
#include "geopref/status.hpp"

namespace geopref {
namespace c_fields {

/// The C type of a field of the list: bool and the enums are int, arrays of
/// them arrays of int, everything else itself.
template <class T>
struct c_field {
  using type = std::conditional_t<std::is_enum_v<T> || std::is_same_v<T, bool>, int, T>;
};
template <class T, std::size_t N>
struct c_field<T[N]> {
  using type = typename c_field<T>::type[N];
};
template <class T>
using c_field_t = typename c_field<T>::type;

// Every field of the list is a member of geopref_options with the C type of
// the list's type, and the C struct has no other member but struct_size (ABI
// 1.0, c_api.h): its size is struct_size, the fields' sizes and its padding. (The C members are in the ABI's order —
// fields were appended release by release — not the list's, so the order is
// not checked; the padding is 4 bytes after each of the four ints loss,
// reduction, average_logps and transform, which precede 8-byte members.)
// A field added to the list without its C member, or a C member the list
// lacks, fails to compile here.
#define GEOPREF_X(P, kind, type, name, c_name, def, flag, doc)                                   \
  static_assert(std::is_same_v<decltype(geopref_options::c_name), c_field_t<type>>,              \
                "geopref_options." #c_name " must have the C type of the field list's " #type);
GEOPREF_OPTIONS_FIELDS(GEOPREF_X)
#undef GEOPREF_X
inline constexpr std::size_t C_OPTIONS_PADDING = 4 * 4;
#define GEOPREF_X(P, kind, type, name, c_name, def, flag, doc) +sizeof(c_field_t<type>)
static_assert(offsetof(geopref_options, struct_size) == 0);
static_assert(sizeof(geopref_options) ==
                  sizeof(std::size_t) + C_OPTIONS_PADDING GEOPREF_OPTIONS_FIELDS(GEOPREF_X),
              "geopref_options has a member GEOPREF_OPTIONS_FIELDS does not");
#undef GEOPREF_X

// ---- C to C++: a value out of range maps to the status the C++ API gives
// for it (an enum's enum_info<E>::invalid), never to a blind cast.
inline status from_c(double c, double* o, const geopref_options&) {
  *o = c;
  return status::success;
}
inline status from_c(int64_t c, int64_t* o, const geopref_options&) {
  *o = c;
  return status::success;
}
inline status from_c(int c, bool* o, const geopref_options&) {
  *o = c != 0;
  return status::success;
}
/// The one int field, n_terms: the number of terms of a combination.
inline status from_c(int c, int* o, const geopref_options&) {
  if (c < 0 || c > MAX_LOSS_TERMS) return status::invalid_loss_option;
  *o = c;
  return status::success;
}
template <class E, std::enable_if_t<std::is_enum_v<E>, int> = 0>
status from_c(int c, E* o, const geopref_options&) {
  if (c < 0 || c >= enum_info<E>::count) return enum_info<E>::invalid;
  *o = static_cast<E>(c);
  return status::success;
}
/// The terms arrays: the first n_terms entries (the rest are never read).
template <class C, class T, std::size_t N>
status from_c(const C (&c)[N], T (*o)[N], const geopref_options& whole) {
  for (int k = 0; k < whole.n_terms && k < static_cast<int>(N); ++k)
    if (const status s = from_c(c[k], &(*o)[k], whole); s != status::success) return s;
  return status::success;
}

// ---- C++ to C.
template <class T>
void to_c(const T& v, c_field_t<T>* c) {
  *c = static_cast<c_field_t<T>>(v);
}
template <class T, std::size_t N>
void to_c(const T (&v)[N], c_field_t<T> (*c)[N]) {
  for (std::size_t k = 0; k < N; ++k) to_c(v[k], &(*c)[k]);
}

}  // namespace c_fields

/// The C options as C++ ones, one conversion per field of the list, in its
/// order; the first out-of-range value's status. `c` is a whole struct of this
/// library's layout (the C entries read the caller's by its struct_size first,
/// kernels/c_api_common.cuh).
inline status from_c(const geopref_options& c, options* o) {
  status s = status::success;
#define GEOPREF_X(P, kind, type, name, c_name, def, flag, doc) \
  if (s == status::success) s = c_fields::from_c(c.c_name, &o->P name, c);
  GEOPREF_OPTIONS_FIELDS(GEOPREF_X)
#undef GEOPREF_X
  return s;
}

/// The C++ options as C ones, struct_size set (geopref_options_init:
/// to_c(options{})).
inline geopref_options to_c(const options& o) {
  geopref_options c;
  c.struct_size = sizeof(geopref_options);
#define GEOPREF_X(P, kind, type, name, c_name, def, flag, doc) c_fields::to_c(o.P name, &c.c_name);
  GEOPREF_OPTIONS_FIELDS(GEOPREF_X)
#undef GEOPREF_X
  return c;
}

}  // namespace geopref
