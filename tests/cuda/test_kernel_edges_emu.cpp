// tests/cuda/test_kernel_edges_emu.cpp — test_kernel_edges.cu for the host
// emulator, as test_gpu_emu.cpp does for test_gpu.cu.
#include "test_kernel_edges.cu"
