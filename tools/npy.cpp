// tools/npy.cpp — see npy.hpp. The header grammar accepted is the one NumPy
// writes (numpy.lib.format): a Python dict literal with exactly the keys
// 'descr', 'fortran_order' and 'shape', padded with spaces, ending in '\n'.
#include "npy.hpp"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <utility>

namespace geopref::tools {

namespace {

constexpr unsigned char NPY_MAGIC[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};

bool fail(std::string* error, const std::string& msg) {
  if (error != nullptr) *error = msg;
  return false;
}

bool host_is_big_endian() noexcept {
  const uint16_t one = 1;
  unsigned char b[2];
  std::memcpy(b, &one, 2);
  return b[0] == 0;
}

// A cursor over the header text [p, end).
struct cursor {
  const char* p;
  const char* end;

  void skip_ws() {
    while (p < end && (*p == ' ' || *p == '\t')) ++p;
  }
  bool eat(char c) {
    skip_ws();
    if (p < end && *p == c) {
      ++p;
      return true;
    }
    return false;
  }
  // A quoted Python string without escapes: '...' or "...".
  bool string(std::string* s) {
    skip_ws();
    if (p >= end || (*p != '\'' && *p != '"')) return false;
    const char q = *p++;
    const char* start = p;
    while (p < end && *p != q) {
      if (*p == '\\' || *p == '\n' || static_cast<unsigned char>(*p) < 0x20 ||
          static_cast<unsigned char>(*p) >= 0x7f)
        return false;
      ++p;
    }
    if (p >= end) return false;
    s->assign(start, p);
    ++p;
    return true;
  }
  bool word(const char* w) {
    skip_ws();
    const std::size_t n = std::strlen(w);
    if (static_cast<std::size_t>(end - p) < n || std::memcmp(p, w, n) != 0) return false;
    // The word must end here ("True" but not "Truex").
    if (static_cast<std::size_t>(end - p) > n) {
      const char c = p[n];
      if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_')
        return false;
    }
    p += n;
    return true;
  }
  // A non-negative decimal integer no larger than NPY_MAX_ELEMENTS.
  bool dimension(int64_t* v) {
    skip_ws();
    if (p >= end || *p < '0' || *p > '9') return false;
    int64_t x = 0;
    int digits = 0;
    while (p < end && *p >= '0' && *p <= '9') {
      if (++digits > 18) return false;  // keeps x * 10 + 9 inside int64
      x = x * 10 + (*p - '0');
      ++p;
    }
    if (x > NPY_MAX_ELEMENTS) return false;
    *v = x;
    return true;
  }
};

bool parse_descr(const std::string& d, npy_header* h, std::string* error) {
  if (d.size() != 3) return fail(error, "unsupported dtype '" + d + "'");
  const char order = d[0];
  const std::string kind = d.substr(1);
  if (kind == "f2") h->dtype = npy_dtype::float16;
  else if (kind == "f4") h->dtype = npy_dtype::float32;
  else if (kind == "f8") h->dtype = npy_dtype::float64;
  else if (kind == "i4") h->dtype = npy_dtype::int32;
  else if (kind == "i8") h->dtype = npy_dtype::int64;
  else
    return fail(error, "unsupported dtype '" + d +
                           "' (expected float16, float32, float64, int32 or int64)");
  if (order == '<') h->big_endian = false;
  else if (order == '>') h->big_endian = true;
  else return fail(error, "unsupported byte order in dtype '" + d + "'");
  return true;
}

bool parse_shape(cursor& c, npy_header* h, std::string* error) {
  if (!c.eat('(')) return fail(error, "malformed header: 'shape' is not a tuple");
  h->shape.clear();
  bool trailing_comma = false;
  if (!c.eat(')')) {
    for (;;) {
      int64_t v = 0;
      if (!c.dimension(&v))
        return fail(error, "malformed header: a shape entry is not a non-negative integer <= 2^48");
      if (static_cast<int>(h->shape.size()) == NPY_MAX_DIMS)
        return fail(error, "shape has more than " + std::to_string(NPY_MAX_DIMS) + " dimensions");
      h->shape.push_back(v);
      trailing_comma = c.eat(',');
      if (c.eat(')')) break;
      if (!trailing_comma) return fail(error, "malformed header: bad 'shape' tuple");
    }
    // (3) is the integer 3 in Python, not a tuple.
    if (h->shape.size() == 1 && !trailing_comma)
      return fail(error, "malformed header: one-element 'shape' needs a trailing comma");
  }
  return true;
}

}  // namespace

const char* npy_dtype_name(npy_dtype t) noexcept {
  switch (t) {
    case npy_dtype::float16: return "float16";
    case npy_dtype::float32: return "float32";
    case npy_dtype::float64: return "float64";
    case npy_dtype::int32: return "int32";
    case npy_dtype::int64: return "int64";
  }
  return "unknown";
}

std::size_t npy_dtype_size(npy_dtype t) noexcept {
  switch (t) {
    case npy_dtype::float16: return 2;
    case npy_dtype::float32:
    case npy_dtype::int32: return 4;
    case npy_dtype::float64:
    case npy_dtype::int64: return 8;
  }
  return 0;
}

std::string npy_shape_string(const std::vector<int64_t>& shape) {
  std::string s = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) s += ", ";
    s += std::to_string(shape[i]);
  }
  if (shape.size() == 1) s += ",";
  return s + ")";
}

bool parse_npy_header(const unsigned char* bytes, std::size_t n, npy_header* out,
                      std::string* error) {
  if (n < 10) return fail(error, "not a .npy file: shorter than the 10-byte preamble");
  if (std::memcmp(bytes, NPY_MAGIC, 6) != 0) return fail(error, "not a .npy file: wrong magic string");
  const unsigned major = bytes[6], minor = bytes[7];
  if (major < 1 || major > 3 || minor != 0)
    return fail(error, "unsupported .npy format version " + std::to_string(major) + "." +
                           std::to_string(minor));
  std::size_t header_len = 0, prefix = 0;
  if (major == 1) {
    header_len = std::size_t(bytes[8]) | (std::size_t(bytes[9]) << 8);
    prefix = 10;
  } else {
    if (n < 12) return fail(error, "truncated .npy preamble");
    header_len = std::size_t(bytes[8]) | (std::size_t(bytes[9]) << 8) |
                 (std::size_t(bytes[10]) << 16) | (std::size_t(bytes[11]) << 24);
    prefix = 12;
  }
  if (header_len > NPY_MAX_HEADER_BYTES)
    return fail(error, "malformed .npy: header length " + std::to_string(header_len) +
                           " exceeds the limit of " + std::to_string(NPY_MAX_HEADER_BYTES));
  if (n - prefix < header_len) return fail(error, "truncated .npy header");
  const char* text = reinterpret_cast<const char*>(bytes + prefix);
  if (header_len == 0 || text[header_len - 1] != '\n')
    return fail(error, "malformed header: does not end with a newline");

  cursor c{text, text + header_len - 1};
  bool have_descr = false, have_fortran = false, have_shape = false;
  npy_header h;
  if (!c.eat('{')) return fail(error, "malformed header: not a dict");
  if (!c.eat('}')) {
    for (;;) {
      std::string key;
      if (!c.string(&key)) return fail(error, "malformed header: expected a quoted key");
      if (!c.eat(':')) return fail(error, "malformed header: expected ':' after '" + key + "'");
      if (key == "descr") {
        std::string d;
        if (have_descr) return fail(error, "malformed header: duplicate 'descr'");
        if (!c.string(&d)) return fail(error, "malformed header: 'descr' is not a string");
        if (!parse_descr(d, &h, error)) return false;
        have_descr = true;
      } else if (key == "fortran_order") {
        if (have_fortran) return fail(error, "malformed header: duplicate 'fortran_order'");
        if (c.word("True"))
          return fail(error, "Fortran-order arrays are not supported; save a C-order array");
        if (!c.word("False")) return fail(error, "malformed header: 'fortran_order' is not a bool");
        have_fortran = true;
      } else if (key == "shape") {
        if (have_shape) return fail(error, "malformed header: duplicate 'shape'");
        if (!parse_shape(c, &h, error)) return false;
        have_shape = true;
      } else {
        return fail(error, "malformed header: unexpected key '" + key + "'");
      }
      const bool comma = c.eat(',');
      if (c.eat('}')) break;
      if (!comma) return fail(error, "malformed header: expected ',' or '}'");
    }
  }
  if (!(have_descr && have_fortran && have_shape))
    return fail(error, "malformed header: needs 'descr', 'fortran_order' and 'shape'");
  c.skip_ws();
  if (c.p != c.end) return fail(error, "malformed header: trailing characters after the dict");

  // Element and byte counts, overflow-checked: every factor is <= 2^48, and
  // the running product is bounded by 2^48 before each multiplication.
  int64_t count = 1;
  for (int64_t d : h.shape) {
    if (d == 0) {
      count = 0;
      continue;
    }
    if (count > NPY_MAX_ELEMENTS / d)
      return fail(error, "shape " + npy_shape_string(h.shape) + " has too many elements");
    count *= d;
  }
  h.count = count;
  h.data_bytes = count * static_cast<int64_t>(npy_dtype_size(h.dtype));
  h.data_offset = prefix + header_len;
  *out = h;
  return true;
}

int64_t npy_array::count() const noexcept {
  int64_t c = 1;
  for (int64_t d : shape) c *= d;
  return c;
}

namespace {

// Allocates the vector for h's dtype and returns where its bytes go.
void* prepare(npy_array* a, const npy_header& h) {
  a->dtype = h.dtype;
  a->shape = h.shape;
  a->f16.clear();
  a->f32.clear();
  a->f64.clear();
  a->i32.clear();
  a->i64.clear();
  const auto n = static_cast<std::size_t>(h.count);
  switch (h.dtype) {
    case npy_dtype::float16: a->f16.resize(n); return a->f16.data();
    case npy_dtype::float32: a->f32.resize(n); return a->f32.data();
    case npy_dtype::float64: a->f64.resize(n); return a->f64.data();
    case npy_dtype::int32: a->i32.resize(n); return a->i32.data();
    case npy_dtype::int64: a->i64.resize(n); return a->i64.data();
  }
  return nullptr;
}

void fix_byte_order(void* data, const npy_header& h) {
  if (h.big_endian == host_is_big_endian()) return;
  const std::size_t w = npy_dtype_size(h.dtype);
  auto* b = static_cast<unsigned char*>(data);
  for (int64_t i = 0; i < h.count; ++i, b += w)
    for (std::size_t k = 0; k < w / 2; ++k) {
      const unsigned char t = b[k];
      b[k] = b[w - 1 - k];
      b[w - 1 - k] = t;
    }
}

}  // namespace

bool parse_npy(const unsigned char* bytes, std::size_t n, npy_array* out, std::string* error) {
  npy_header h;
  if (!parse_npy_header(bytes, n, &h, error)) return false;
  const std::size_t have = n - h.data_offset;
  if (have != static_cast<std::size_t>(h.data_bytes))
    return fail(error, "data size mismatch: shape " + npy_shape_string(h.shape) + " of " +
                           npy_dtype_name(h.dtype) + " needs " + std::to_string(h.data_bytes) +
                           " bytes, the file has " + std::to_string(have));
  void* dst = prepare(out, h);
  if (h.data_bytes > 0) std::memcpy(dst, bytes + h.data_offset, static_cast<std::size_t>(h.data_bytes));
  fix_byte_order(dst, h);
  return true;
}

bool read_npy(const std::string& path, npy_array* out, std::string* error) {
  struct closer {
    void operator()(std::FILE* f) const { std::fclose(f); }
  };
  std::unique_ptr<std::FILE, closer> f(std::fopen(path.c_str(), "rb"));
  if (!f) return fail(error, "cannot open " + path + ": " + std::strerror(errno));
  if (std::fseek(f.get(), 0, SEEK_END) != 0) return fail(error, "cannot seek in " + path);
  const long size_l = std::ftell(f.get());
  if (size_l < 0) return fail(error, "cannot determine the size of " + path);
  const auto size = static_cast<std::size_t>(size_l);
  std::rewind(f.get());

  // The header first (bounded), so nothing is allocated from an unchecked shape.
  std::vector<unsigned char> head(std::min<std::size_t>(size, 12 + NPY_MAX_HEADER_BYTES));
  if (!head.empty() && std::fread(head.data(), 1, head.size(), f.get()) != head.size())
    return fail(error, "cannot read " + path);
  npy_header h;
  std::string msg;
  if (!parse_npy_header(head.data(), head.size(), &h, &msg)) return fail(error, path + ": " + msg);
  const std::size_t have = size - h.data_offset;
  if (have != static_cast<std::size_t>(h.data_bytes))
    return fail(error, path + ": data size mismatch: shape " + npy_shape_string(h.shape) + " of " +
                           npy_dtype_name(h.dtype) + " needs " + std::to_string(h.data_bytes) +
                           " bytes, the file has " + std::to_string(have));
  void* dst = prepare(out, h);
  if (std::fseek(f.get(), static_cast<long>(h.data_offset), SEEK_SET) != 0)
    return fail(error, "cannot seek in " + path);
  if (h.data_bytes > 0 &&
      std::fread(dst, 1, static_cast<std::size_t>(h.data_bytes), f.get()) !=
          static_cast<std::size_t>(h.data_bytes))
    return fail(error, "cannot read the data of " + path);
  fix_byte_order(dst, h);
  return true;
}

bool write_npy(const std::string& path, npy_dtype dtype, const std::vector<int64_t>& shape,
               const void* data, std::string* error) {
  static const char* const descr[] = {"<f2", "<f4", "<f8", "<i4", "<i8"};
  int64_t count = 1;
  for (int64_t d : shape) {
    if (d < 0) return fail(error, "write_npy: negative dimension");
    count *= d;
  }
  std::string header = std::string("{'descr': '") + descr[static_cast<int>(dtype)] +
                       "', 'fortran_order': False, 'shape': " + npy_shape_string(shape) + ", }";
  // Pad so that the data starts at a multiple of 64 bytes, as NumPy does.
  const std::size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  if (header.size() > 65535) return fail(error, "write_npy: header too long");
  std::vector<unsigned char> bytes(NPY_MAGIC, NPY_MAGIC + 6);
  bytes.push_back(1);
  bytes.push_back(0);
  bytes.push_back(static_cast<unsigned char>(header.size() & 0xff));
  bytes.push_back(static_cast<unsigned char>(header.size() >> 8));
  bytes.insert(bytes.end(), header.begin(), header.end());
  const std::size_t w = npy_dtype_size(dtype);
  const auto n_bytes = static_cast<std::size_t>(count) * w;
  const std::size_t start = bytes.size();
  bytes.resize(start + n_bytes);
  if (n_bytes > 0) std::memcpy(bytes.data() + start, data, n_bytes);
  if (host_is_big_endian())
    for (std::size_t i = start; i < bytes.size(); i += w)
      for (std::size_t k = 0; k < w / 2; ++k) std::swap(bytes[i + k], bytes[i + w - 1 - k]);

  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return fail(error, "cannot create " + path + ": " + std::strerror(errno));
  const bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  if (std::fclose(f) != 0 || !ok) return fail(error, "cannot write " + path);
  return true;
}

float half_bits_to_float(uint16_t h) noexcept {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);  // inf / NaN (payload kept)
  } else if (exp != 0) {
    bits = sign | ((exp + 112u) << 23) | (mant << 13);  // normal: rebias 15 -> 127
  } else if (mant == 0) {
    bits = sign;  // ±0
  } else {
    // Subnormal: shift the mantissa up until its leading 1 is the implicit bit.
    uint32_t e = 113;
    while ((mant & 0x400u) == 0) {
      mant <<= 1;
      --e;
    }
    bits = sign | (e << 23) | ((mant & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

bool npy_to_double(const npy_array& a, std::vector<double>* out) {
  out->clear();
  switch (a.dtype) {
    case npy_dtype::float16:
      out->reserve(a.f16.size());
      for (uint16_t h : a.f16) out->push_back(half_bits_to_float(h));
      return true;
    case npy_dtype::float32: out->assign(a.f32.begin(), a.f32.end()); return true;
    case npy_dtype::float64: *out = a.f64; return true;
    default: return false;
  }
}

bool npy_to_int64(const npy_array& a, std::vector<int64_t>* out) {
  out->clear();
  switch (a.dtype) {
    case npy_dtype::int32: out->assign(a.i32.begin(), a.i32.end()); return true;
    case npy_dtype::int64: *out = a.i64; return true;
    default: return false;
  }
}

}  // namespace geopref::tools
