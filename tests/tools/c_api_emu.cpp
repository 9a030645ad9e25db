// The C ABI (kernels/c_api.cu) compiled by the C++ compiler against the host
// emulator, for test_c_api_abi_emu (tests/tools/CMakeLists.txt).
#include "../../kernels/c_api.cu"
