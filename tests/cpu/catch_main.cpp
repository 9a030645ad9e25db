// The Catch2 main, compiled once for every host test executable.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
