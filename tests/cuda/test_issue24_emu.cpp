// tests/cuda/test_issue24_emu.cpp — test_issue24.cu for the host emulator, as
// test_gpu_emu.cpp is test_gpu.cu (geopref_emu_gpu_test in CMakeLists.txt).
#include "test_issue24.cu"
