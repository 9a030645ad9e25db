// tests/cuda/test_vocab_parallel_emu.cpp — test_vocab_parallel.cu for the host emulator.
#include "test_vocab_parallel.cu"
