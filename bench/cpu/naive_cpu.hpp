// bench/cpu/naive_cpu.hpp — the loss computed the way a framework runs it op
// by op, in fp32 on the CPU: materialise the log-softmax, gather, masked sum,
// pair loss, then autograd's backward (scatter into a zeroed [N, V] gradient
// of the log-softmax, then the log-softmax backward). The CPU bench times it
// against the reference; it is the CPU twin of bench/gpu/naive_kernels.cuh.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "common/synthetic.hpp"
#include "geopref/losses.hpp"

namespace geopref::bench {

template <class T>
class naive_cpu {
 public:
  // Inputs: logits [N, V] row-major, labels [N], offsets [S + 1],
  // soft labels [P], reference log-probs [S]. Pair i = (i, P + i).
  naive_cpu(const shape& s, const T* logits, const int32_t* labels, const int64_t* offsets,
            const double* soft_labels, const double* ref_logps, float beta)
      : s_(s),
        z_(logits),
        labels_(labels),
        offsets_(offsets),
        soft_(soft_labels),
        ref_(ref_logps),
        loss_fn_{{beta}},
        log_probs_(static_cast<size_t>(s.elements())),
        grad_log_probs_(static_cast<size_t>(s.elements())),
        token_logps_(static_cast<size_t>(s.rows)),
        seq_logps_(static_cast<size_t>(s.seqs())),
        grad_seq_(static_cast<size_t>(s.seqs())) {}

  /// Forward: returns the mean gdpo loss over pairs.
  float forward() {
    const int64_t N = s_.rows, V = s_.vocab;
    // log_softmax: row max, then sum of exp, then write LP = z - max - log(sum).
    for (int64_t t = 0; t < N; ++t) {
      const T* z = z_ + t * V;
      float m = -INFINITY;
      for (int64_t v = 0; v < V; ++v) m = std::max(m, static_cast<float>(z[v]));
      float sum = 0.0f;
      for (int64_t v = 0; v < V; ++v) sum += std::exp(static_cast<float>(z[v]) - m);
      const float shift = m + std::log(sum);
      float* lp = log_probs_.data() + t * V;
      for (int64_t v = 0; v < V; ++v) lp[v] = static_cast<float>(z[v]) - shift;
    }
    // gather with ignored labels clamped to 0, then the mask (TRL's way).
    for (int64_t t = 0; t < N; ++t) {
      const bool scored = labels_[t] != IGNORE_INDEX;
      const int64_t y = scored ? labels_[t] : 0;
      token_logps_[t] = scored ? log_probs_[t * V + y] : 0.0f;
    }
    // masked per-sequence sum
    for (int64_t q = 0; q < s_.seqs(); ++q) {
      float acc = 0.0f;
      for (int64_t t = offsets_[q]; t < offsets_[q + 1]; ++t) acc += token_logps_[t];
      seq_logps_[q] = acc;
    }
    // pair loss (mean) and the per-sequence coefficients for the backward
    const int64_t P = s_.pairs();
    float loss = 0.0f;
    for (int64_t i = 0; i < P; ++i) {
      const float h = (seq_logps_[i] - static_cast<float>(ref_[i])) -
                      (seq_logps_[P + i] - static_cast<float>(ref_[P + i]));
      const float p = static_cast<float>(soft_[i]);
      loss += loss_fn_.value(h, p);
      const float d = loss_fn_.derivative(h, p) / static_cast<float>(P);
      grad_seq_[i] = d;
      grad_seq_[P + i] = -d;
    }
    return loss / static_cast<float>(P);
  }

  /// Backward after forward(): writes grad [N, V] = ∂loss/∂logits.
  void backward(float* grad) {
    const int64_t N = s_.rows, V = s_.vocab;
    // gather backward: zeros, then the sequence coefficient at each scored label.
    std::fill(grad_log_probs_.begin(), grad_log_probs_.end(), 0.0f);
    for (int64_t q = 0; q < s_.seqs(); ++q)
      for (int64_t t = offsets_[q]; t < offsets_[q + 1]; ++t)
        if (labels_[t] != IGNORE_INDEX) grad_log_probs_[t * V + labels_[t]] = grad_seq_[q];
    // log_softmax backward: dz = dLP - exp(LP) * rowsum(dLP).
    for (int64_t t = 0; t < N; ++t) {
      const float* dlp = grad_log_probs_.data() + t * V;
      const float* lp = log_probs_.data() + t * V;
      float sum = 0.0f;
      for (int64_t v = 0; v < V; ++v) sum += dlp[v];
      float* g = grad + t * V;
      for (int64_t v = 0; v < V; ++v) g[v] = dlp[v] - std::exp(lp[v]) * sum;
    }
  }

  /// Bytes of host memory beyond inputs and gradient (LP and dLP dominate).
  double extra_bytes() const {
    return 4.0 * static_cast<double>(log_probs_.size() + grad_log_probs_.size() +
                                     token_logps_.size() + seq_logps_.size() + grad_seq_.size());
  }

 private:
  shape s_;
  const T* z_;
  const int32_t* labels_;
  const int64_t* offsets_;
  const double* soft_;
  const double* ref_;
  gdpo_loss<float> loss_fn_;
  std::vector<float> log_probs_;       // [N, V] LP
  std::vector<float> grad_log_probs_;  // [N, V] dLP
  std::vector<float> token_logps_;     // [N]
  std::vector<float> seq_logps_;       // [S]
  std::vector<float> grad_seq_;        // [S] ∂loss/∂L_s
};

}  // namespace geopref::bench
