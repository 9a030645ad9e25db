// bench/common/cli.hpp — the benches' own flags, taken out of argv before
// Google Benchmark sees the rest (it rejects flags it does not know).
//
//   --quick            the small, fast set (ctest smoke run, or a short GPU run)
//   --rows=N           token rows N
//   --seq-len=L        rows per sequence (N must be a multiple of 2L)
//   --vocab=A,B,...    vocabulary sizes V
//   --dtype=bf16,fp32  logit dtypes
//   --iters=K          timed iterations per benchmark (GPU benches)
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace geopref::bench {

struct cli_options {
  bool quick = false;
  int64_t rows = 0;
  int64_t seq_len = 0;
  std::vector<int64_t> vocabs;
  std::vector<std::string> dtypes;
  int64_t iters = 0;
};

inline std::vector<std::string> split_commas(const char* s) {
  std::vector<std::string> out;
  std::string cur;
  for (; *s != '\0'; ++s) {
    if (*s == ',') {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
    } else {
      cur.push_back(*s);
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

/// Reads and removes our flags from argv into *opt; what the flags leave
/// unset comes from `quick_defaults` under --quick, else `full_defaults`.
/// Returns false with a message on a malformed value.
inline bool parse_cli(int* argc, char** argv, const cli_options& full_defaults,
                      const cli_options& quick_defaults, cli_options* opt, std::string* error) {
  *opt = cli_options{};
  int kept = 1;
  for (int i = 1; i < *argc; ++i) {
    const char* a = argv[i];
    auto value_of = [a](const char* name) -> const char* {
      const size_t len = std::strlen(name);
      return std::strncmp(a, name, len) == 0 && a[len] == '=' ? a + len + 1 : nullptr;
    };
    auto positive = [error, a](const char* v, int64_t* out) {
      char* end = nullptr;
      const long long x = std::strtoll(v, &end, 10);
      if (end == v || *end != '\0' || x <= 0) {
        *error = std::string("bad value in ") + a;
        return false;
      }
      *out = static_cast<int64_t>(x);
      return true;
    };
    const char* v = nullptr;
    if (std::strcmp(a, "--quick") == 0) {
      opt->quick = true;
    } else if ((v = value_of("--rows")) != nullptr) {
      if (!positive(v, &opt->rows)) return false;
    } else if ((v = value_of("--seq-len")) != nullptr) {
      if (!positive(v, &opt->seq_len)) return false;
    } else if ((v = value_of("--iters")) != nullptr) {
      if (!positive(v, &opt->iters)) return false;
    } else if ((v = value_of("--vocab")) != nullptr) {
      opt->vocabs.clear();
      for (const std::string& s : split_commas(v)) {
        int64_t x = 0;
        if (!positive(s.c_str(), &x)) return false;
        opt->vocabs.push_back(x);
      }
    } else if ((v = value_of("--dtype")) != nullptr) {
      opt->dtypes = split_commas(v);
      for (const std::string& d : opt->dtypes) {
        if (d != "bf16" && d != "fp32") {
          *error = "unknown dtype " + d + " (bf16, fp32)";
          return false;
        }
      }
    } else {
      argv[kept++] = argv[i];
      continue;
    }
  }
  *argc = kept;
  argv[kept] = nullptr;
  const cli_options& d = opt->quick ? quick_defaults : full_defaults;
  if (opt->rows == 0) opt->rows = d.rows;
  if (opt->seq_len == 0) opt->seq_len = d.seq_len;
  if (opt->iters == 0) opt->iters = d.iters;
  if (opt->vocabs.empty()) opt->vocabs = d.vocabs;
  if (opt->dtypes.empty()) opt->dtypes = d.dtypes;
  if (opt->rows <= 0 || opt->seq_len <= 0 || opt->rows % (2 * opt->seq_len) != 0) {
    *error = "--rows must be a positive multiple of 2 * --seq-len";
    return false;
  }
  return true;
}

inline bool wants(const cli_options& o, const char* dtype) {
  for (const std::string& d : o.dtypes)
    if (d == dtype) return true;
  return false;
}

}  // namespace geopref::bench
