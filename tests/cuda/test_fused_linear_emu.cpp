// tests/cuda/test_fused_linear_emu.cpp — test_fused_linear.cu for the host
// emulator (its cuBLAS is dev/emu/include/cublas_v2.h), as test_gpu_emu.cpp
// is test_gpu.cu.
#include "test_fused_linear.cu"
