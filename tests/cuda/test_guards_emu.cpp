// tests/cuda/test_guards_emu.cpp — test_guards.cu for the host emulator, as
// test_gpu_emu.cpp is test_gpu.cu (geopref_emu_gpu_test in CMakeLists.txt).
#include "test_guards.cu"
