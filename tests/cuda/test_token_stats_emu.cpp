// tests/cuda/test_token_stats_emu.cpp — test_token_stats.cu for the host
// emulator, as test_gpu_emu.cpp is test_gpu.cu (geopref_emu_gpu_test in CMakeLists.txt).
#include "test_token_stats.cu"
