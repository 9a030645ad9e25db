// tests/cuda/test_linear_token_emu.cpp — test_linear_token.cu for the host
// emulator (its cuBLAS is dev/emu/include/cublas_v2.h).
#include "test_linear_token.cu"
