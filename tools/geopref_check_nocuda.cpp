// tools/geopref_check_nocuda.cpp — run_cuda() for a geopref-check built
// without the compiled kernels: --device cuda is a clean error.
#include "check_problem.hpp"

namespace geopref::tools {

bool run_cuda(const check_problem&, check_result*, std::string* error) {
  *error = "this geopref-check was built without CUDA (configure with nvcc to enable it)";
  return false;
}

bool run_cuda_tokens(const check_problem& p, check_result* r, std::string* error) {
  return run_cuda(p, r, error);
}

}  // namespace geopref::tools

namespace geopref::tools {

bool run_cuda_linear(const check_problem& p, check_result* r, std::string* error) {
  return run_cuda(p, r, error);
}

}  // namespace geopref::tools
