// The C ABI compiled into the torch extension by torch's own tooling (CUDA
// builds only): the same translation unit as the compiled library
// (kernels/c_api.cu), included so that nvcc never sees a torch header.
#include "../../../kernels/c_api.cu"
