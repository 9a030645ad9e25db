// geopref-check --device cuda against --device cpu on the same files: the
// kernels through the C ABI against the CPU reference, for float32, float16
// and float64 (rounded to float32 on the way to the device) logits. A plain
// program, not Catch2, so that it can exit 77 ("skipped") without a GPU.
#include <sys/wait.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "npy.hpp"
#include "npy_bytes.hpp"

using namespace geopref::test;

namespace {

const std::string TMP = std::string(GEOPREF_TEST_TMP);
int failures = 0;

std::string path(const std::string& n) { return TMP + "/" + n; }

int run(const std::string& args, std::string* err) {
  const std::string e = path("stderr.txt");
  const std::string cmd = std::string("'") + GEOPREF_CHECK_EXE + "' " + args + " 2> '" + e + "'";
  const int st = std::system(cmd.c_str());
  bytes b;
  err->clear();
  if (read_file(e, &b)) err->assign(b.begin(), b.end());
  return WIFEXITED(st) ? WEXITSTATUS(st) : 1000;
}

std::vector<double> read_any(const std::string& p) {
  geopref::tools::npy_array a;
  std::string err;
  std::vector<double> v;
  if (!geopref::tools::read_npy(p, &a, &err) || !geopref::tools::npy_to_double(a, &v)) {
    std::printf("FAIL: cannot read %s: %s\n", p.c_str(), err.c_str());
    ++failures;
  }
  return v;
}

double json_value(const std::string& p, const std::string& key) {
  bytes b;
  if (!read_file(p, &b)) return std::nan("");
  const std::string s(b.begin(), b.end()), k = "\"" + key + "\": ";
  const std::size_t at = s.find(k);
  return at == std::string::npos ? std::nan("") : std::strtod(s.c_str() + at + k.size(), nullptr);
}

// Every element within atol + rtol·|cpu|; prints the worst one.
void compare(const std::string& what, const std::vector<double>& cpu,
             const std::vector<double>& gpu, double atol, double rtol) {
  double worst = 0;
  std::size_t at = 0;
  bool ok = cpu.size() == gpu.size();
  for (std::size_t i = 0; ok && i < cpu.size(); ++i) {
    const double d = std::fabs(cpu[i] - gpu[i]), lim = atol + rtol * std::fabs(cpu[i]);
    if (!(d <= lim)) ok = false;
    if (d > worst || std::isnan(d)) worst = d, at = i;
  }
  std::printf("  %-28s %s  n=%zu  max |diff| %.3g at %zu\n", what.c_str(), ok ? "ok  " : "FAIL",
              cpu.size(), worst, at);
  failures += ok ? 0 : 1;
}

// Runs both devices on `inputs` and compares every output. Tolerances: the
// GPU stores log-probs, loss and gradient in float32 and accumulates the
// row log-sum-exp in float32: per token a few ulps of |lse| ~ 10 (≈ 1e-6),
// summed over up to T = 40 tokens per sequence (logps 1e-4 absolute); the
// loss and rewards carry β times that; the gradient is a softmax difference
// scaled by |g_s| <= β, stored in float32 (1e-6 absolute + 1e-4 relative).
// --hidden runs (`linear`) write grad_hidden / grad_weight / grad_bias in place
// of grad_logits: sums over V or N of the chunk's gradient times W or H
// (float32 GEMMs on the GPU), so a looser relative bound.
void both(const std::string& name, const std::string& inputs, bool per_token = false,
          bool linear = false) {
  std::printf("%s\n", name.c_str());
  std::string err;
  const std::string cpu = path(name + "_cpu"), gpu = path(name + "_gpu");
  if (run(inputs + " --device cpu --out " + cpu, &err) != 0) {
    std::printf("  FAIL: cpu run: %s", err.c_str());
    ++failures;
    return;
  }
  const int rc = run(inputs + " --device cuda --out " + gpu, &err);
  if (rc != 0 && err.find("no usable CUDA device") != std::string::npos) {
    std::printf("  no usable CUDA device: skipped\n");
    std::exit(77);
  }
  if (rc != 0) {
    std::printf("  FAIL: cuda run: %s", err.c_str());
    ++failures;
    return;
  }
  // The gradients: of H, W and b with --hidden, else of the logits, whose
  // absolute tolerance is logits_abs.
  const auto compare_grads = [&](double logits_abs) {
    if (linear) {
      for (const char* f : {"/grad_hidden.npy", "/grad_weight.npy", "/grad_bias.npy"})
        compare(f + 1, read_any(cpu + f), read_any(gpu + f), 1e-5, 1e-3);
    } else {
      compare("grad_logits.npy", read_any(cpu + "/grad_logits.npy"),
              read_any(gpu + "/grad_logits.npy"), logits_abs, 1e-4);
    }
  };
  if (per_token) {
    // Per token: ℓ_t and H_t carry a few float32 ulps of |lse| (~1e-6); the
    // gradient of Σ G_t ℓ_t is |G_t| <= 2 times a softmax difference.
    compare("token_logps.npy", read_any(cpu + "/token_logps.npy"),
            read_any(gpu + "/token_logps.npy"), 1e-5, 1e-5);
    compare("entropy.npy", read_any(cpu + "/entropy.npy"), read_any(gpu + "/entropy.npy"), 1e-5,
            1e-5);
    compare_grads(2e-6);
    return;
  }
  compare("loss.npy", read_any(cpu + "/loss.npy"), read_any(gpu + "/loss.npy"), 1e-5, 1e-5);
  compare("logps.npy", read_any(cpu + "/logps.npy"), read_any(gpu + "/logps.npy"), 1e-4, 1e-5);
  compare_grads(1e-6);
  for (const char* k : {"rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen",
                        "logps/rejected", "rewards/accuracies", "calibration_error"})
    compare(k, {json_value(cpu + "/metrics.json", k)}, {json_value(gpu + "/metrics.json", k)},
            1e-4, 1e-5);
}

template <class T>
std::string save(const std::string& n, const std::string& descr, const std::string& shape,
                 const std::vector<T>& v) {
  if (!write_file(path(n), npy_file(descr, shape, v))) {
    std::printf("FAIL: cannot write %s\n", path(n).c_str());
    std::exit(1);
  }
  return path(n);
}

}  // namespace

int main() {
  const unsigned seed = 2024;
  std::printf("seed %u\n", seed);
  std::mt19937 rng(seed);
  std::normal_distribution<float> z(0.0f, 2.0f);

  // [N, V] float32, V = 1001 (not a multiple of any vector width), ragged
  // sequences incl. an empty one, int32 labels with masked rows, soft labels.
  {
    const int64_t V = 1001;
    const std::vector<int32_t> offsets = {0, 17, 17, 40, 41, 60, 75};
    const int64_t N = 75;
    std::vector<float> logits(static_cast<std::size_t>(N * V));
    for (float& x : logits) x = z(rng);
    std::vector<int32_t> labels(static_cast<std::size_t>(N));
    for (auto& y : labels) y = static_cast<int32_t>(rng() % V);
    for (int64_t t = 0; t < N; t += 5) labels[static_cast<std::size_t>(t)] = -100;
    const std::string in = "--logits " + save("a_l.npy", "<f4", "(75, 1001)", logits) +
                           " --labels " + save("a_y.npy", "<i4", "(75,)", labels) +
                           " --offsets " + save("a_o.npy", "<i4", "(7,)", offsets) +
                           " --soft-labels " +
                           save("a_p.npy", "<f8", "(3,)", std::vector<double>{0.9, 0.5, 0.25}) +
                           " --ref-logps " +
                           save("a_r.npy", "<f8", "(6,)",
                                std::vector<double>{-70, -1, -160, -5, -130, -110});
    for (const char* loss : {"dpo", "gdpo", "cdpo", "ipo", "gropo", "discopop"})
      both(std::string("f32_") + loss, in + " --loss " + loss + " --beta 0.1 --gamma 0.5");
    // The vocab-parallel path over simulated ranks, on both devices.
    both("f32_gdpo_vocab_shards_3", in + " --loss gdpo --beta 0.1 --vocab-shards 3");
    both("f32_dpo_sft_vocab_shards_8", in + " --loss dpo,sft --loss-weights 1,0.5 --beta 0.1 --vocab-shards 8");
    // The per-token primitive on the same rows, with an upstream gradient.
    std::vector<float> g(static_cast<std::size_t>(N));
    for (float& x : g) x = 0.5f * z(rng);
    both("f32_per_token",
         "--per-token --logits " + path("a_l.npy") + " --labels " + path("a_y.npy") +
             " --token-grad " + save("a_g.npy", "<f4", "(75,)", g),
         true);
    // The logit transform (a cap that bends most of these logits, a scale, a
    // temperature) through the loss, the vocab shards and the per-token path.
    const std::string tr = " --logit-scale 1.5 --softcap 4 --temperature 0.8";
    both("f32_gdpo_transform", in + " --loss gdpo --beta 0.1" + tr);
    both("f32_dpo_transform_vocab_shards_3", in + " --loss dpo --beta 0.1 --vocab-shards 3" + tr);
    both("f32_per_token_transform",
         "--per-token --logits " + path("a_l.npy") + " --labels " + path("a_y.npy") +
             " --token-grad " + path("a_g.npy") + tr,
         true);
  }
  // [S, T, V] float16, explicit pairs, weights, reduction none, averaged logps.
  {
    const int64_t S = 6, T = 40, V = 515;
    std::vector<uint16_t> bits;
    for (int64_t i = 0; i < S * T * V; ++i) {
      // float -> binary16 for |x| < 8 by rounding the float's bits (normal range only).
      const float x = z(rng);
      uint32_t u;
      std::memcpy(&u, &x, 4);
      const uint32_t sign = (u >> 16) & 0x8000u;
      const int32_t e = static_cast<int32_t>((u >> 23) & 0xff) - 127 + 15;
      uint16_t h = static_cast<uint16_t>(sign);
      if (e > 0 && e < 31)
        h = static_cast<uint16_t>(sign | (static_cast<uint32_t>(e) << 10) | ((u >> 13) & 0x3ffu));
      bits.push_back(h);
    }
    std::vector<int64_t> labels(static_cast<std::size_t>(S * T));
    for (auto& y : labels) y = static_cast<int64_t>(rng() % V);
    for (int64_t t = 0; t < T; ++t) labels[static_cast<std::size_t>(2 * T + t)] = -100;  // masked seq
    const std::string in =
        "--logits " + save("b_l.npy", "<f2", "(6, 40, 515)", bits) + " --labels " +
        save("b_y.npy", "<i8", "(6, 40)", labels) + " --pairs " +
        save("b_i.npy", "<i8", "(4, 2)", std::vector<int64_t>{0, 1, 2, 3, 4, 5, 5, 0}) +
        " --weights " + save("b_w.npy", "<f4", "(4,)", std::vector<float>{1, 0.5f, 2, 0}) +
        " --soft-labels " + save("b_p.npy", "<f4", "(4,)", std::vector<float>{1, 0.7f, 0.2f, 0.5f});
    both("f16_gdpo_none_avg", in + " --loss gdpo --beta 2 --reduction none --average-logps");
    both("f16_simpo_sum", in + " --loss simpo --beta 2 --gamma 0.3 --reduction sum");
    both("f16_gdpo_none_softcap", in + " --loss gdpo --beta 2 --reduction none --softcap 3");
    both("f16_gdpo_none_vocab_shards_2",
         in + " --loss gdpo --beta 2 --reduction none --average-logps --vocab-shards 2");
  }
  // float64 logits (rounded to float32 for the device), default pairing.
  {
    const int64_t N = 12, V = 33;
    std::vector<double> logits(static_cast<std::size_t>(N * V));
    for (double& x : logits) x = static_cast<float>(z(rng));  // representable in float32
    std::vector<int64_t> labels(static_cast<std::size_t>(N));
    for (auto& y : labels) y = static_cast<int64_t>(rng() % V);
    const std::string in = "--logits " + save("c_l.npy", "<f8", "(12, 33)", logits) +
                           " --labels " + save("c_y.npy", "<i8", "(12,)", labels) +
                           " --offsets " +
                           save("c_o.npy", "<i8", "(5,)", std::vector<int64_t>{0, 3, 6, 9, 12});
    both("f64_robust", in + " --loss robust --epsilon 0.2 --beta 0.5");
  }
  // --hidden / --weight / --bias (the fused-linear path, chunked on the GPU)
  // with and without the logit transform, as a loss and per token.
  {
    const int64_t S = 4, T = 8, Hd = 16, V = 300;
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    std::vector<float> H(static_cast<std::size_t>(S * T * Hd)), W(static_cast<std::size_t>(V * Hd)),
        b(static_cast<std::size_t>(V)), g(static_cast<std::size_t>(S * T));
    for (float& x : H) x = u(rng);
    for (float& x : W) x = 0.5f * u(rng);
    for (float& x : b) x = u(rng);
    for (float& x : g) x = u(rng);
    std::vector<int64_t> labels(static_cast<std::size_t>(S * T));
    for (auto& y : labels) y = static_cast<int64_t>(rng() % V);
    for (int64_t t = 0; t < S * T; t += 7) labels[static_cast<std::size_t>(t)] = -100;
    const std::string lin = "--hidden " + save("h_h.npy", "<f4", "(4, 8, 16)", H) + " --weight " +
                            save("h_w.npy", "<f4", "(300, 16)", W) + " --bias " +
                            save("h_b.npy", "<f4", "(300,)", b) + " --labels " +
                            save("h_y.npy", "<i8", "(4, 8)", labels);
    const std::string tr = " --logit-scale 2 --softcap 3 --temperature 0.9";
    const std::string soft =
        " --soft-labels " + save("h_p.npy", "<f8", "(2,)", std::vector<double>{0.8, 0.3});
    both("hidden_gdpo", lin + soft + " --loss gdpo --beta 0.5", false, true);
    both("hidden_gdpo_transform", lin + soft + " --loss gdpo --beta 0.5" + tr, false, true);
    both("hidden_gdpo_transform_vocab_shards_2",
         lin + soft + " --loss gdpo --beta 0.5 --vocab-shards 2" + tr, false, true);
    both("hidden_per_token_transform",
         lin + " --per-token --token-grad " + save("h_g.npy", "<f4", "(4, 8)", g) + tr, true, true);
  }
  // A library status raised on the device: a label out of range.
  {
    std::string err;
    const std::string in = "--logits " + path("c_l.npy") + " --labels " +
                           save("d_y.npy", "<i8", "(12,)", std::vector<int64_t>(12, 33)) +
                           " --offsets " + path("c_o.npy") + " --loss dpo --device cuda --out " +
                           path("d_gpu");
    const int rc = run(in, &err);
    const bool ok = rc == 1 && err.find("label out of range") != std::string::npos;
    std::printf("device-side label check: %s (%s)\n", ok ? "ok" : "FAIL", err.c_str());
    failures += ok ? 0 : 1;
  }
  std::printf("%s\n", failures ? "FAILED" : "all passed");
  return failures ? 1 : 0;
}
