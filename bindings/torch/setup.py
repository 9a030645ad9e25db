"""Builds geopref_torch._C, the geopref operators, with torch's extension tooling.

    pip install --no-build-isolation ./bindings/torch

What is compiled:
  * always: the operator schemas and their CPU kernels (csrc/ops.cpp and the
    fused-linear operators' csrc/ops_linear.cpp, over the CPU reference in
    include/geopref/reference, which needs Eigen's headers);
  * with CUDA: the CUDA kernels (csrc/ops_cuda.cpp, csrc/ops_linear_cuda.cpp)
    and the library's C ABI (kernels/c_api.cu and kernels/c_api_linear.cu,
    through csrc/c_api.cu and csrc/c_api_linear.cu), for TORCH_CUDA_ARCH_LIST,
    linked with cuBLAS (the fused-linear path's GEMMs).

GEOPREF_TORCH_CUDA chooses: 0 = CPU only, 1 = CUDA (an error if torch or the
machine has no CUDA toolkit), unset/auto = CUDA when torch was built with CUDA,
nvcc is found and either a GPU is visible or TORCH_CUDA_ARCH_LIST is set. So a
machine without a GPU (CI) builds the CPU operators only, in about 2.8
minutes of compiler CPU time (3.5 to 6 minutes measured on 2 cores shared
with other builds), and TORCH_CUDA_ARCH_LIST=9.0 compiles the CUDA kernels
without a GPU.

GEOPREF_TORCH_KERNELS_LIB=/path/to/libgeopref_cuda.a links the kernels a CMake
build of this repository already compiled (target geopref_cuda_static, built
for the card's architectures) instead of compiling kernels/c_api.cu again:
the slowest part of the CUDA build (scripts/gpu-check.d/30-integration.sh).

Eigen: GEOPREF_EIGEN_INCLUDE (or EIGEN3_INCLUDE_DIR), else the repository's
.deps/root (scripts/gpu-check.sh --stage), else the usual system prefixes.
Nothing is downloaded.
"""
import os
import sys

from setuptools import setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:  # an isolated build environment has no torch
    sys.exit(
        "geopref-torch is compiled against the installed PyTorch: install torch first, "
        "then build without isolation: pip install --no-build-isolation ./bindings/torch"
    )

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
INCLUDE = os.path.join(ROOT, "include")


def fail(msg):
    sys.exit("geopref-torch: " + msg)


def eigen_include():
    given = os.environ.get("GEOPREF_EIGEN_INCLUDE") or os.environ.get("EIGEN3_INCLUDE_DIR")
    candidates = [given] if given else []
    candidates += [
        os.path.join(ROOT, ".deps", "root", "usr", "include", "eigen3"),
        os.path.join(sys.prefix, "include", "eigen3"),
        "/usr/include/eigen3",
        "/usr/local/include/eigen3",
    ]
    if os.environ.get("CONDA_PREFIX"):
        candidates.append(os.path.join(os.environ["CONDA_PREFIX"], "include", "eigen3"))
    for c in candidates:
        if c and os.path.isfile(os.path.join(c, "Eigen", "Core")):
            return c
    fail("Eigen's headers were not found (the CPU reference needs them): install them "
         "(Debian: apt-get install libeigen3-dev) or set GEOPREF_EIGEN_INCLUDE. Looked in: "
         + ", ".join(c for c in candidates if c))


def build_cuda():
    choice = os.environ.get("GEOPREF_TORCH_CUDA", "auto").lower()
    toolkit = torch.version.cuda is not None and CUDA_HOME is not None
    if choice in ("0", "off", "false", "no"):
        return False
    if choice in ("1", "on", "true", "yes"):
        if not toolkit:
            fail("GEOPREF_TORCH_CUDA=1, but torch has no CUDA (torch.version.cuda = %s) or nvcc "
                 "was not found (CUDA_HOME = %s)" % (torch.version.cuda, CUDA_HOME))
        return True
    return toolkit and (torch.cuda.is_available() or bool(os.environ.get("TORCH_CUDA_ARCH_LIST")))


if not os.path.isfile(os.path.join(INCLUDE, "geopref", "reference", "reference.hpp")):
    fail("include/geopref not found next to bindings/torch: build from a clone of the "
         "geopref repository")

cuda = build_cuda()
print("geopref-torch: building the CPU operators" + (" and the CUDA kernels (TORCH_CUDA_ARCH_LIST=%s)"
      % os.environ.get("TORCH_CUDA_ARCH_LIST", "the visible GPU") if cuda else " only"))
include_dirs = [INCLUDE, eigen_include()]
# The library's headers use __half / __nv_bfloat16 conversions and operators,
# which torch's default nvcc flags switch off (-D__CUDA_NO_HALF_...): undo.
nvcc_flags = ["-O3", "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
              "-U__CUDA_NO_HALF2_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__"]
if cuda:
    kernels_lib = os.environ.get("GEOPREF_TORCH_KERNELS_LIB")
    if kernels_lib and not os.path.isfile(kernels_lib):
        fail("GEOPREF_TORCH_KERNELS_LIB=%s does not exist" % kernels_lib)
    if kernels_lib:
        print("geopref-torch: linking the compiled kernels " + kernels_lib)
    ext = CUDAExtension(
        "geopref_torch._C",
        sources=["csrc/ops.cpp", "csrc/ops_linear.cpp", "csrc/ops_vocab.cpp", "csrc/ops_cuda.cpp",
                 "csrc/ops_linear_cuda.cpp"]
        + ([] if kernels_lib else ["csrc/c_api.cu", "csrc/c_api_linear.cu"]),
        include_dirs=include_dirs,
        extra_objects=[kernels_lib] if kernels_lib else [],
        libraries=["cublas"],
        extra_compile_args={"cxx": ["-O2"], "nvcc": nvcc_flags},
    )
else:
    ext = CppExtension(
        "geopref_torch._C",
        sources=["csrc/ops.cpp", "csrc/ops_linear.cpp", "csrc/ops_vocab.cpp"],
        include_dirs=include_dirs,
        extra_compile_args={"cxx": ["-O2"]},
    )

setup(ext_modules=[ext], cmdclass={"build_ext": BuildExtension})
