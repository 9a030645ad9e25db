// tests/cuda/test_gpu_emu.cpp — test_gpu.cu for the host emulator: the same
// translation unit, compiled by the C++ compiler against dev/emu's CUDA
// headers (geopref_emu_gpu_test in CMakeLists.txt).
#include "test_gpu.cu"
