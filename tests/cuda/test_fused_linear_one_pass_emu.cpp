// tests/cuda/test_fused_linear_one_pass_emu.cpp — test_fused_linear_one_pass.cu
// (and through it test_fused_linear.cu) for the host emulator, as
// test_gpu_emu.cpp is test_gpu.cu.
#include "test_fused_linear_one_pass.cu"
