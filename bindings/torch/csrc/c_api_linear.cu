// The fused-linear part of the C ABI compiled into the torch extension (CUDA
// builds only): kernels/c_api_linear.cu, the translation unit of the compiled
// library that needs cuBLAS, included so that nvcc never sees a torch header.
#include "../../../kernels/c_api_linear.cu"
