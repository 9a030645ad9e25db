// examples/grpo/gpu_path_emu.cpp — the same GPU path compiled by the C++
// compiler against the project's host emulator (dev/emu), so the example
// runs its GPU column on machines without a GPU.
#include "gpu_path.cu"
