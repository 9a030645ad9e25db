// tests/cuda_host/host_main.cpp — Catch2's main for geopref_cuda_host_test.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
