#!/usr/bin/env python3
"""The parts of csrc/cpu_linear.h no operator reaches yet, checked directly:
the per-token statistics (log Σ p², mean logit, is_top1) of its forward fold
and the entropy upstream (grad_entropy) of its backward, against float64
torch math on the same inputs. Not collected by pytest (it compiles a shim
with torch.utils.cpp_extension.load_inline, about a minute on 2 cores); run
it by hand, from the repository root, after changing cpu_linear.h:

    python bindings/torch/tests/check_cpu_linear_stats.py

Once the operators expose these outputs, test_cpu_linear.py's comparison
with the float64 path covers them and this script can go."""
import os
import sys

import torch
from torch.utils.cpp_extension import load_inline

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
SHIM = r'''
#include <ATen/ATen.h>
#include "cpu_linear.h"
using namespace geopref_torch;
static geopref::logit_transform transform(double s, double c, double T) {
  geopref::logit_transform tr;
  tr.scale = s; tr.softcap = c; tr.temperature = T;
  return tr;
}
std::vector<at::Tensor> stats(const at::Tensor& h, const at::Tensor& w, const at::Tensor& b,
                              const at::Tensor& y, double s, double c, double T, int64_t chunk) {
  linear_tensors t{h, w, b};
  const auto f64 = h.options().dtype(at::kDouble);
  const int64_t N = h.size(0);
  at::Tensor lp = at::zeros({N}, f64), lse = at::zeros({N}, f64), ent = at::zeros({N}, f64),
             sq = at::zeros({N}, f64), mean = at::zeros({N}, f64),
             top = at::zeros({N}, h.options().dtype(at::kByte));
  geopref::reference::token_outputs o;
  o.token_logps = lp.data_ptr<double>(); o.lse = lse.data_ptr<double>();
  o.entropy = ent.data_ptr<double>(); o.log_sum_sq_probs = sq.data_ptr<double>();
  o.mean_logits = mean.data_ptr<double>(); o.is_top1 = top.data_ptr<uint8_t>();
  TORCH_CHECK(cpu_linear::token_logps(t, y, -100, transform(s, c, T), chunk, o) ==
              geopref::status::success);
  return {lp, lse, ent, sq, mean, top};
}
std::vector<at::Tensor> grads(const at::Tensor& h, const at::Tensor& w, const at::Tensor& b,
                              const at::Tensor& y, double s, double c, double T, int64_t chunk,
                              const at::Tensor& lse, const at::Tensor& g, const at::Tensor& e,
                              bool with_entropy) {
  linear_tensors t{h, w, b};
  std::tuple<at::Tensor, at::Tensor, at::Tensor> r;
  at::Tensor ent;
  if (with_entropy) ent = stats(h, w, b, y, s, c, T, chunk)[2];
  TORCH_CHECK(cpu_linear::token_logps_grad(t, y, -100, transform(s, c, T), chunk,
                                           lse.data_ptr<double>(), g.data_ptr<double>(),
                                           {true, true, true}, r, e.data_ptr<double>(),
                                           with_entropy ? ent.data_ptr<double>() : nullptr) ==
              geopref::status::success);
  return {std::get<0>(r), std::get<1>(r), std::get<2>(r)};
}
'''


def main():
    m = load_inline("geopref_cpu_linear_check", cpp_sources=SHIM, functions=["stats", "grads"],
                    extra_cflags=["-O2"],
                    extra_include_paths=[os.path.join(ROOT, "bindings/torch/csrc"),
                                         os.path.join(ROOT, "include"), "/usr/include/eigen3"])
    gen = torch.Generator().manual_seed(0)
    N, H, V = 50, 30, 1000
    failures = 0
    for dt in (torch.float32, torch.bfloat16):
        for s, c, T in ((1.0, 0.0, 1.0), (1.3, 4.0, 0.7)):
            h = torch.randn(N, H, generator=gen).to(dt)
            w = (torch.randn(V, H, generator=gen) * 0.5).to(dt)
            b = torch.randn(V, generator=gen).to(dt)
            y = torch.randint(0, V, (N,), generator=gen)
            y[::7] = -100
            z = h.double() @ w.double().t() + b.double()
            am = z.argmax(-1)
            y[1], y[2] = am[1], am[2]            # top-1 labels
            j = int(am[3])                       # row 3's maximum at j and k alike:
            k = (j + 1) % V
            w[k], b[k] = w[j], b[j]
            z = h.double() @ w.double().t() + b.double()
            y[3] = max(j, k)                     # the later of two equal maxima: not top-1
            zp = c * torch.tanh(s * z / c) / T if c > 0 else s * z / T
            ls = torch.log_softmax(zp, -1)
            p = ls.exp()
            sc = (y != -100).double()
            yy = y.clamp(min=0)
            first = z.argmax(-1)  # torch's argmax: the first maximum
            ref = [ls.gather(1, yy[:, None])[:, 0], torch.logsumexp(zp, -1), -(p * ls).sum(-1),
                   torch.log((p * p).sum(-1)), zp.mean(-1), (first == yy).double()]
            for chunk in (1 << 30, 4 * V):  # one tile; 256-column tiles of 15 rows
                got = m.stats(h, w, b, y, s, c, T, chunk)
                # float32 logits of H = 30 products: 2e-5 on every statistic.
                for name, a, r in zip(("logp", "lse", "entropy", "log_sum_sq", "mean", "top1"),
                                      got, ref):
                    err = ((a.double() - r) * sc).abs().max().item()
                    if err > 2e-5:
                        print(f"FAIL {dt} {(s, c, T)} chunk={chunk} {name}: {err}")
                        failures += 1
                g = torch.randn(N, generator=gen, dtype=torch.float64)
                e = torch.randn(N, generator=gen, dtype=torch.float64)
                zz = z.clone().requires_grad_()
                zq = c * torch.tanh(s * zz / c) / T if c > 0 else s * zz / T
                lq = torch.log_softmax(zq, -1)
                ((lq.gather(1, yy[:, None])[:, 0] * g - (lq.exp() * lq).sum(-1) * e) * sc
                 ).sum().backward()
                G = zz.grad
                want = [G @ w.double(), G.t() @ h.double(), G.sum(0)]
                # the input dtype's rounding (2^-8 bfloat16) or float32's 2e-5, relative.
                tol = 2e-5 if dt == torch.float32 else 2.0 ** -8
                for with_entropy in (False, True):  # E from a forward pass, or given
                    out = m.grads(h, w, b, y, s, c, T, chunk, got[1], g, e, with_entropy)
                    for name, a, r in zip(("hidden", "weight", "bias"), out, want):
                        rel = ((a.double() - r).abs().max() / r.abs().max()).item()
                        if rel > tol:
                            print(f"FAIL {dt} {(s, c, T)} chunk={chunk} grad_{name}: {rel}")
                            failures += 1
    print("check_cpu_linear_stats:", "all passed" if failures == 0 else f"{failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
