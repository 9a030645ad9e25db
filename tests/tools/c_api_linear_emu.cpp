// The fused-linear C ABI (kernels/c_api_linear.cu) compiled by the C++ compiler
// against the host emulator and its cuBLAS, for test_c_api_abi_emu.
#include "../../kernels/c_api_linear.cu"
