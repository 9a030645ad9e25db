// The C ABI compiled into the PyTorch extension by torch's own tooling: the
// same source as the compiled library (kernels/c_api.cu), included so that
// every source of the extension lives in this folder.
#include "../../kernels/c_api.cu"
