// tools/npy.hpp — strict reading and writing of NumPy .npy files (format
// versions 1.0, 2.0 and 3.0) for geopref-check and its tests.
//
// Only what the tool needs: little- or big-endian float16/32/64 and int32/64,
// C order, at most NPY_MAX_DIMS dimensions. Anything else — a bad magic
// string, a header that is not exactly the dict NumPy writes, an unsupported
// dtype, Fortran order, a shape whose byte count overflows, a data section
// shorter or longer than the shape says — is an error with a message, never a
// crash or an allocation sized by the file before the size is checked against
// the file's length.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace geopref::tools {

enum class npy_dtype { float16, float32, float64, int32, int64 };

inline constexpr int NPY_MAX_DIMS = 8;
// NumPy itself refuses headers over 10000 bytes by default; a little slack.
inline constexpr std::size_t NPY_MAX_HEADER_BYTES = 1u << 16;
// No dimension and no element count above this (2^48, ~2.8e14) is plausible;
// it keeps every product of byte counts far from int64 overflow.
inline constexpr int64_t NPY_MAX_ELEMENTS = int64_t(1) << 48;

const char* npy_dtype_name(npy_dtype t) noexcept;  // "float32", ...
std::size_t npy_dtype_size(npy_dtype t) noexcept;   // bytes per element

/// What the header says.
struct npy_header {
  npy_dtype dtype = npy_dtype::float32;
  bool big_endian = false;
  std::vector<int64_t> shape;  // () for a scalar
  std::size_t data_offset = 0; // bytes from the file start to the data
  int64_t count = 1;           // product of shape
  int64_t data_bytes = 0;      // count * element size
};

/// Parses the preamble and header of a .npy file held in `bytes[0, n)`; `n`
/// may be the whole file or just a prefix of it. Returns false with a message
/// in *error when the header is malformed or incomplete.
bool parse_npy_header(const unsigned char* bytes, std::size_t n, npy_header* out,
                      std::string* error);

/// An array read from a file; exactly one of the vectors holds the data
/// (float16 as raw IEEE binary16 bits), converted to the machine's byte order.
struct npy_array {
  npy_dtype dtype = npy_dtype::float32;
  std::vector<int64_t> shape;
  std::vector<uint16_t> f16;
  std::vector<float> f32;
  std::vector<double> f64;
  std::vector<int32_t> i32;
  std::vector<int64_t> i64;

  int64_t count() const noexcept;
  int ndim() const noexcept { return static_cast<int>(shape.size()); }
  bool is_float() const noexcept {
    return dtype == npy_dtype::float16 || dtype == npy_dtype::float32 ||
           dtype == npy_dtype::float64;
  }
  bool is_int() const noexcept { return dtype == npy_dtype::int32 || dtype == npy_dtype::int64; }
};

/// Parses a whole .npy file held in memory: the header, then exactly
/// header.data_bytes of data and nothing after it.
bool parse_npy(const unsigned char* bytes, std::size_t n, npy_array* out, std::string* error);

/// Reads a .npy file. The file's size must be exactly header + data.
bool read_npy(const std::string& path, npy_array* out, std::string* error);

/// Writes a little-endian, C-order, version 1.0 .npy file. `data` holds
/// product(shape) elements of `dtype` in the machine's byte order.
bool write_npy(const std::string& path, npy_dtype dtype, const std::vector<int64_t>& shape,
               const void* data, std::string* error);

/// Converts a float array to double (float16 exactly); false for int arrays.
bool npy_to_double(const npy_array& a, std::vector<double>* out);
/// Converts an int array to int64; false for float arrays.
bool npy_to_int64(const npy_array& a, std::vector<int64_t>* out);

/// "(2, 3)" — for messages.
std::string npy_shape_string(const std::vector<int64_t>& shape);

/// IEEE binary16 bits to float, exactly (subnormals, inf, NaN included).
float half_bits_to_float(uint16_t h) noexcept;

}  // namespace geopref::tools
