// The strict .npy reader of geopref-check: round trips, every kind of
// malformed file it must reject with a message, and a seeded mutation fuzz
// loop that must never crash (CI runs this under ASan + UBSan too).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "npy.hpp"
#include "npy_bytes.hpp"

using geopref::tools::npy_array;
using geopref::tools::npy_dtype;
using geopref::tools::parse_npy;
using namespace geopref::test;

namespace {

std::string reject(const bytes& b) {
  npy_array a;
  std::string err;
  const bool ok = parse_npy(b.data(), b.size(), &a, &err);
  if (ok) return "<accepted>";
  if (err.empty()) return "<rejected without a message>";
  return err;
}

std::string tmp_path(const std::string& name) { return std::string(GEOPREF_TEST_TMP) + "/" + name; }

}  // namespace

TEST_CASE("npy: reads what NumPy writes, every supported dtype", "[npy]") {
  npy_array a;
  std::string err;

  const std::vector<float> f = {1.5f, -2.0f, 0.0f, 3.25f, 1e-30f, -7.0f};
  bytes b = npy_file("<f4", "(2, 3)", f);
  REQUIRE(parse_npy(b.data(), b.size(), &a, &err));
  CHECK(a.dtype == npy_dtype::float32);
  CHECK(a.shape == std::vector<int64_t>{2, 3});
  CHECK(a.f32 == f);

  const std::vector<double> d = {0.1, -1e300, 5e-324};
  b = npy_file("<f8", "(3,)", d, 2);  // format version 2.0
  REQUIRE(parse_npy(b.data(), b.size(), &a, &err));
  CHECK(a.dtype == npy_dtype::float64);
  CHECK(a.f64 == d);

  const std::vector<int32_t> i = {-100, 0, 7, 2147483647};
  b = npy_file("<i4", "(2, 1, 2)", i, 3);  // format version 3.0
  REQUIRE(parse_npy(b.data(), b.size(), &a, &err));
  CHECK(a.shape == std::vector<int64_t>{2, 1, 2});
  CHECK(a.i32 == i);

  const std::vector<int64_t> l = {std::numeric_limits<int64_t>::min(), 3};
  b = npy_file("<i8", "(2,)", l);
  REQUIRE(parse_npy(b.data(), b.size(), &a, &err));
  CHECK(a.i64 == l);

  // A scalar (shape ()) and an empty array (a zero dimension).
  b = npy_file("<f8", "()", std::vector<double>{42.0});
  REQUIRE(parse_npy(b.data(), b.size(), &a, &err));
  CHECK(a.shape.empty());
  CHECK(a.f64 == std::vector<double>{42.0});
  b = npy_file("<f4", "(0, 5)", std::vector<float>{});
  REQUIRE(parse_npy(b.data(), b.size(), &a, &err));
  CHECK(a.count() == 0);
}

TEST_CASE("npy: float16 converts exactly, subnormals and specials included", "[npy]") {
  // (bits, value) pairs from the IEEE 754 binary16 definition.
  const std::vector<std::pair<uint16_t, float>> cases = {
      {0x0000, 0.0f},           {0x8000, -0.0f},         {0x3c00, 1.0f},
      {0xc000, -2.0f},          {0x7bff, 65504.0f},      {0x0400, 6.103515625e-05f},
      {0x0001, 5.9604645e-08f}, {0x03ff, 6.097555e-05f}, {0x3555, 0.33325195f},
      {0x7c00, std::numeric_limits<float>::infinity()}};
  for (const auto& [bits, value] : cases) {
    INFO("bits 0x" << std::hex << bits);
    CHECK(geopref::tools::half_bits_to_float(bits) == value);
  }
  CHECK(std::signbit(geopref::tools::half_bits_to_float(0x8000)));
  CHECK(std::isnan(geopref::tools::half_bits_to_float(0x7e00)));
  // Every finite half is exactly representable in float: check the exact
  // formula (-1)^s * 2^(e-15) * (1 + m/1024), or 2^-14 * m/1024 for e = 0.
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const uint32_t e = (h >> 10) & 0x1f, m = h & 0x3ff;
    if (e == 0x1f) continue;
    const double mag = e == 0 ? std::ldexp(double(m) / 1024.0, -14)
                              : std::ldexp(1.0 + double(m) / 1024.0, int(e) - 15);
    const double expect = (h & 0x8000) ? -mag : mag;
    if (geopref::tools::half_bits_to_float(static_cast<uint16_t>(h)) != expect) {
      FAIL("half 0x" << std::hex << h);
    }
  }

  npy_array a;
  std::string err;
  const bytes b = npy_file("<f2", "(3,)", std::vector<uint16_t>{0x3c00, 0xc000, 0x0001});
  REQUIRE(parse_npy(b.data(), b.size(), &a, &err));
  std::vector<double> v;
  REQUIRE(geopref::tools::npy_to_double(a, &v));
  CHECK(v == std::vector<double>{1.0, -2.0, std::ldexp(1.0, -24)});
}

TEST_CASE("npy: big-endian data is byte-swapped", "[npy]") {
  bytes b = npy_raw(npy_header_text(">i4", "(2,)"));
  const unsigned char be[] = {0x00, 0x00, 0x01, 0x02, 0xff, 0xff, 0xff, 0x9c};  // 258, -100
  b.insert(b.end(), be, be + 8);
  npy_array a;
  std::string err;
  REQUIRE(parse_npy(b.data(), b.size(), &a, &err));
  CHECK(a.i32 == std::vector<int32_t>{258, -100});
}

TEST_CASE("npy: header dialects NumPy produces are accepted", "[npy]") {
  const std::vector<float> two = {1.0f, 2.0f};
  const auto* p = reinterpret_cast<const unsigned char*>(two.data());
  for (const std::string h : {
           "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }\n",
           "{'shape': (2,), 'fortran_order': False, 'descr': '<f4'}\n",   // any key order
           "{\"descr\": \"<f4\", \"fortran_order\": False, \"shape\": (2, )}   \n",
           "{'descr':'<f4','fortran_order':False,'shape':(2,)}\n"}) {
    bytes b = npy_raw(h);
    b.insert(b.end(), p, p + 8);
    INFO(h);
    CHECK(reject(b) == "<accepted>");
  }
}

TEST_CASE("npy: malformed files are rejected with a message", "[npy]") {
  const std::vector<float> six(6, 1.0f);
  const bytes good = npy_file("<f4", "(2, 3)", six);
  REQUIRE(reject(good) == "<accepted>");

  auto with_header = [&](const std::string& h, int major = 1) {
    bytes b = npy_raw(h, major);
    const auto* p = reinterpret_cast<const unsigned char*>(six.data());
    b.insert(b.end(), p, p + 24);
    return b;
  };
  auto check = [](const bytes& b, const std::string& needle) {
    const std::string err = reject(b);
    INFO("message: " << err);
    CHECK(err != "<accepted>");
    CHECK(err.find(needle) != std::string::npos);
  };

  SECTION("truncated") {
    for (std::size_t n : {std::size_t(0), std::size_t(5), std::size_t(9), std::size_t(20),
                          std::size_t(63), std::size_t(64), good.size() - 1}) {
      const bytes b(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(n));
      INFO("first " << n << " bytes");
      CHECK(reject(b) != "<accepted>");
    }
    check(bytes(good.begin(), good.end() - 4), "data size mismatch");
  }
  SECTION("trailing bytes after the data") {
    bytes b = good;
    b.push_back(0);
    check(b, "data size mismatch");
  }
  SECTION("wrong magic or version") {
    // One byte of the good file changed: where, to what, and the message.
    const struct {
      std::size_t at;
      unsigned char value;
      const char* message;
    } cases[] = {{1, 'n', "wrong magic"},
                 {0, 0x92, "wrong magic"},
                 {6, 4, "version 4.0"},
                 {6, 0, "version 0.0"},
                 {7, 1, "version 1.1"}};
    for (const auto& c : cases) {
      bytes b = good;
      b[c.at] = c.value;
      INFO("byte " << c.at << " = " << int{c.value});
      check(b, c.message);
    }
  }
  SECTION("header length past the end, or absurd") {
    bytes b = good;
    b[8] = 0xff;
    b[9] = 0xff;
    check(b, "truncated .npy header");
    bytes v2 = npy_raw(npy_header_text("<f4", "(2, 3)", false, 2), 2);
    v2[10] = 0xff;  // 4 GiB-ish header length
    check(v2, "exceeds the limit");
  }
  // (header or shape, what the message holds)
  using cases = std::vector<std::pair<std::string, std::string>>;
  SECTION("absurd shapes") {
    for (const auto& [shape, needle] : cases{
             {"(99999999999999999999,)", "shape entry"},
             {"(281474976710657,)", "shape entry"},  // 2^48 + 1
             {"(16777216, 16777216, 16777216)", "too many elements"},
             {"(4294967296, 4294967296)", "too many elements"},
             // Within the limits but far larger than the file: no allocation, an error.
             {"(1000000000, 1000)", "data size mismatch"},
             {"(-2, 3)", "shape entry"},
             {"(1, 1, 1, 1, 1, 1, 1, 1, 6)", "dimensions"}}) {
      INFO("shape " << shape);
      check(with_header(npy_header_text("<f4", shape)), needle);
    }
  }
  SECTION("fortran order") {
    check(with_header(npy_header_text("<f4", "(2, 3)", true)), "Fortran");
  }
  SECTION("unsupported dtypes") {
    for (const std::string d : {"<u1", "|b1", "<c8", "<f16", "<U8", "|O", "=f4", "<u4", "<M8"})
      check(with_header(npy_header_text(d, "(2, 3)")), "dtype");
  }
  SECTION("header garbage") {
    const std::string base = "'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)";
    static const char nul[] = "{'descr': '<f4', 'fortran_order': False, 'sh\0pe': (2, 3)}\n";
    for (const auto& [header, needle] : cases{
             {"{" + base + "}", "newline"},  // no '\n'
             {"[" + base + "]\n", "not a dict"},
             {"{" + base + "\n", "expected ','"},  // unclosed
             {"{" + base + "} x\n", "trailing"},
             {"{" + base + ", 'extra': 1}\n", "unexpected key"},
             {"{" + base + ", 'shape': (2, 3)}\n", "duplicate"},
             {"{'descr': '<f4', 'shape': (2, 3)}\n", "needs"},
             {"{'descr': '<f4, 'fortran_order': False, 'shape': (2, 3)}\n", ""},
             {"{'descr': '<f4' 'fortran_order': False, 'shape': (2, 3)}\n", "expected ','"},
             {"{'descr': '<f4', 'fortran_order': Falsey, 'shape': (2, 3)}\n", "bool"},
             {"{'descr': '<f4', 'fortran_order': 0, 'shape': (2, 3)}\n", "bool"},
             {"{'descr': <f4, 'fortran_order': False, 'shape': (2, 3)}\n", "string"},
             {"{'descr': '<f4', 'fortran_order': False, 'shape': [2, 3]}\n", "tuple"},
             {"{'descr': '<f4', 'fortran_order': False, 'shape': (2 3)}\n", "shape"},
             {"{'descr': '<f4', 'fortran_order': False, 'shape': (6)}\n", "trailing comma"},
             {"{'descr': '<f4', 'fortran_order': False, 'shape': (2,, 3)}\n", "shape"},
             {"{'descr': '<f4', 'fortran_order': False, 'shape': (0x2, 3)}\n", "shape"},
             {"{'descr': '\\x3cf4', 'fortran_order': False, 'shape': (2, 3)}\n", ""},
             {std::string(nul, sizeof nul - 1), ""},
             {"\n", "not a dict"},
             {"", "newline"}}) {
      INFO("header " << header);
      check(with_header(header), needle);
    }
  }
}

TEST_CASE("npy: file reading checks the size before allocating", "[npy]") {
  npy_array a;
  std::string err;
  CHECK_FALSE(geopref::tools::read_npy(tmp_path("does-not-exist.npy"), &a, &err));
  CHECK(err.find("cannot open") != std::string::npos);

  // A header promising 4 GB of data in a tiny file.
  bytes b = npy_raw(npy_header_text("<f4", "(1000000000,)"));
  b.resize(b.size() + 16);
  REQUIRE(write_file(tmp_path("huge.npy"), b));
  CHECK_FALSE(geopref::tools::read_npy(tmp_path("huge.npy"), &a, &err));
  CHECK(err.find("data size mismatch") != std::string::npos);

  REQUIRE(write_file(tmp_path("empty.npy"), bytes{}));
  CHECK_FALSE(geopref::tools::read_npy(tmp_path("empty.npy"), &a, &err));
  CHECK(err.find("preamble") != std::string::npos);

  // Round trip through the tool's writer, then through the independent bytes.
  const std::vector<double> v = {1.0, -0.5, 1e-310, 3.0, 4.0, 5.0};
  REQUIRE(geopref::tools::write_npy(tmp_path("rt.npy"), npy_dtype::float64, {3, 2}, v.data(), &err));
  REQUIRE(geopref::tools::read_npy(tmp_path("rt.npy"), &a, &err));
  CHECK(a.shape == std::vector<int64_t>{3, 2});
  CHECK(a.f64 == v);
  bytes written;
  REQUIRE(read_file(tmp_path("rt.npy"), &written));
  // Byte for byte the test's own assembly: the 71-byte preamble + header is
  // padded to 128 so the data starts 64-byte aligned, then 6 doubles.
  CHECK(written == npy_file("<f8", "(3, 2)", v));
  CHECK(written.size() == 128 + 48);
}

TEST_CASE("npy: seeded mutation fuzzing never crashes", "[npy][fuzz]") {
  const unsigned seed = 20240917;
  std::mt19937 rng(seed);
  INFO("seed " << seed);
  std::vector<bytes> corpus = {
      npy_file("<f4", "(2, 3)", std::vector<float>(6, 0.5f)),
      npy_file("<i8", "(4,)", std::vector<int64_t>{1, 2, 3, 4}, 2),
      npy_file("<f2", "(1, 2, 2)", std::vector<uint16_t>{1, 2, 3, 4}),
      npy_file("<f8", "()", std::vector<double>{1.0}, 3)};
  const std::string alphabet = "{}()[]':,\n 0123456789TrueFalse<>fi48-xshapedescr\"\\";
  int accepted = 0;
  for (int iter = 0; iter < 20000; ++iter) {
    bytes b = corpus[static_cast<std::size_t>(iter) % corpus.size()];
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits && !b.empty(); ++e) {
      const std::size_t pos = rng() % b.size();
      switch (rng() % 5) {
        case 0: b[pos] = static_cast<unsigned char>(rng()); break;
        case 1: b[pos] = static_cast<unsigned char>(alphabet[rng() % alphabet.size()]); break;
        case 2: b.resize(pos); break;
        case 3: b.insert(b.begin() + static_cast<std::ptrdiff_t>(pos),
                         static_cast<unsigned char>(alphabet[rng() % alphabet.size()]));
                break;
        default: b.erase(b.begin() + static_cast<std::ptrdiff_t>(pos)); break;
      }
    }
    npy_array a;
    std::string err;
    if (parse_npy(b.data(), b.size(), &a, &err)) {
      ++accepted;
      // Anything accepted is self-consistent.
      CHECK(static_cast<std::size_t>(a.count()) ==
            a.f16.size() + a.f32.size() + a.f64.size() + a.i32.size() + a.i64.size());
    } else if (err.empty()) {
      FAIL("rejected without a message at iteration " << iter);
    }
  }
  // Some mutations (padding spaces, data bytes) keep a valid file.
  CHECK(accepted > 0);
  CHECK(accepted < 20000);
}
