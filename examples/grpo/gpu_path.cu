// examples/grpo/gpu_path.cu — see gpu_path.hpp: the two calls of the
// per-token primitive with the caller's loss in between, each in CUB's
// two-phase shape (size query, then the call), one workspace for both.
#include "gpu_path.hpp"

#include "device_buffer.hpp"
#include "geopref/cuda/geopref.cuh"

namespace grpo {

outcome gpu_step(const std::vector<float>& logits, int64_t n_rows, int64_t vocab,
                 const std::vector<int32_t>& labels, const token_loss& loss, double& value,
                 std::vector<float>& grad, std::string& why) {
  namespace gc = geopref::cuda;
  using geopref::support::device_buffer;
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0 || cudaSetDevice(0) != cudaSuccess) {
    why = "no CUDA device";
    return outcome::no_device;
  }
  const auto n = static_cast<size_t>(n_rows);
  const device_buffer z = device_buffer::upload(logits), y = device_buffer::upload(labels),
                      d_logps(n * sizeof(float)), d_lse(n * sizeof(float)),
                      d_g(n * sizeof(float)), d_grad(n * static_cast<size_t>(vocab) * sizeof(float));
  for (const device_buffer* d : {&z, &y, &d_logps, &d_lse, &d_g, &d_grad})
    if (!d->ok()) {
      why = std::string("device allocation or copy failed: ") + cudaGetErrorString(d->error());
      return outcome::failed;
    }

  gc::token_rows rows;
  rows.logits = z.get();
  rows.logits_dtype = gc::dtype::float32;
  rows.n_rows = n_rows;
  rows.vocab = vocab;
  rows.ld = vocab;
  rows.labels = y.get();
  rows.label_type = gc::index_type::int32;
  gc::token_logps_args fwd;
  fwd.rows = rows;
  fwd.token_logps = d_logps.get<float>();
  fwd.lse = d_lse.get<float>();  // saved for the backward
  gc::token_grad_args bwd;
  bwd.rows = rows;
  bwd.lse = d_lse.get<float>();
  bwd.grad_token_logps = d_g.get<float>();
  bwd.grad_logits = d_grad.get();
  bwd.grad_float32 = true;

  size_t fwd_bytes = 0, bwd_bytes = 0;
  geopref::status st = gc::token_logps(nullptr, fwd_bytes, fwd);
  if (st == geopref::status::success) st = gc::token_logps_grad(nullptr, bwd_bytes, bwd);
  const device_buffer ws(fwd_bytes > bwd_bytes ? fwd_bytes : bwd_bytes);
  geopref::status recorded = geopref::status::success;
  // A call's own status, then what its kernels recorded about the data.
  auto check = [&](geopref::status s) {
    if (s == geopref::status::success) s = gc::device_status(ws.get(), nullptr, &recorded);
    if (s == geopref::status::success) s = recorded;
    if (s != geopref::status::success) why = geopref::status_string(s);
    return s == geopref::status::success;
  };
  if (st != geopref::status::success || !ws.ok()) {
    why = st != geopref::status::success ? geopref::status_string(st) : "workspace allocation failed";
    return outcome::failed;
  }
  if (!check(gc::token_logps(ws.get(), fwd_bytes, fwd))) return outcome::failed;

  // The caller's part: the loss from ℓ_t, and g_t.
  std::vector<float> logps_f(n);
  if (cudaMemcpy(logps_f.data(), d_logps.get(), n * sizeof(float), cudaMemcpyDeviceToHost) != cudaSuccess) {
    why = "download failed";
    return outcome::failed;
  }
  std::vector<double> logps(logps_f.begin(), logps_f.end()), g(n, 0.0);
  value = loss(logps, g);
  const std::vector<float> g_f(g.begin(), g.end());
  if (cudaMemcpy(d_g.get(), g_f.data(), n * sizeof(float), cudaMemcpyHostToDevice) != cudaSuccess ||
      !check(gc::token_logps_grad(ws.get(), bwd_bytes, bwd))) {
    if (why.empty()) why = "upload failed";
    return outcome::failed;
  }
  grad.assign(n * static_cast<size_t>(vocab), 0.0f);
  if (cudaMemcpy(grad.data(), d_grad.get(), grad.size() * sizeof(float), cudaMemcpyDeviceToHost) !=
      cudaSuccess) {
    why = "download failed";
    return outcome::failed;
  }
  return outcome::ok;
}

}  // namespace grpo
