// tests/cuda/test_logit_transform_emu.cpp — test_logit_transform.cu for the
// host emulator, as test_gpu_emu.cpp is test_gpu.cu.
#include "test_logit_transform.cu"
