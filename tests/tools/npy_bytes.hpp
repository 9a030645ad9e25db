// tests/tools/npy_bytes.hpp — .npy files assembled byte by byte for the tests,
// independently of tools/npy.cpp, so a bug in the tool's writer cannot hide
// the same bug in its reader.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace geopref::test {

using bytes = std::vector<unsigned char>;

/// Magic, version, header length, then `header` verbatim (no padding added).
inline bytes npy_raw(const std::string& header, int major = 1) {
  bytes b = {0x93, 'N', 'U', 'M', 'P', 'Y', static_cast<unsigned char>(major), 0};
  const std::size_t n = header.size();
  b.push_back(static_cast<unsigned char>(n & 0xff));
  b.push_back(static_cast<unsigned char>((n >> 8) & 0xff));
  if (major >= 2) {
    b.push_back(static_cast<unsigned char>((n >> 16) & 0xff));
    b.push_back(static_cast<unsigned char>((n >> 24) & 0xff));
  }
  b.insert(b.end(), header.begin(), header.end());
  return b;
}

/// The header NumPy writes for descr/shape ("(2, 3)"), padded to 64 bytes.
inline std::string npy_header_text(const std::string& descr, const std::string& shape,
                                   bool fortran = false, int major = 1) {
  std::string h = "{'descr': '" + descr + "', 'fortran_order': " + (fortran ? "True" : "False") +
                  ", 'shape': " + shape + ", }";
  const std::size_t prefix = major >= 2 ? 12 : 10;
  while ((prefix + h.size() + 1) % 64 != 0) h += ' ';
  return h + '\n';
}

/// A complete little-endian file for `values` (host order must be little-endian).
template <class T>
bytes npy_file(const std::string& descr, const std::string& shape, const std::vector<T>& values,
               int major = 1) {
  bytes b = npy_raw(npy_header_text(descr, shape, false, major), major);
  const auto* p = reinterpret_cast<const unsigned char*>(values.data());
  b.insert(b.end(), p, p + values.size() * sizeof(T));
  return b;
}

inline bool write_file(const std::string& path, const bytes& b) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return false;
  const bool ok = b.empty() || std::fwrite(b.data(), 1, b.size(), f) == b.size();
  return std::fclose(f) == 0 && ok;
}

inline bool read_file(const std::string& path, bytes* b) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return false;
  b->clear();
  unsigned char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) b->insert(b->end(), buf, buf + n);
  std::fclose(f);
  return true;
}

}  // namespace geopref::test
