"""Builds the geopref PyTorch op with torch's extension tooling:

    cd bindings/torch && python3 setup.py build_ext --inplace
    GEOPREF_TORCH_LIB=$PWD/geopref_torch_ext*.so python3 test_geopref_torch.py

(or let geopref_torch.load() compile it on first use, which needs ninja).
The C++ standard and the CUDA architectures come from torch
(TORCH_CUDA_ARCH_LIST, default: the visible GPU).
"""
import os

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CUDAExtension

here = os.path.dirname(os.path.abspath(__file__))
include = os.path.normpath(os.path.join(here, "..", "..", "include"))

setup(
    name="geopref_torch_ext",
    ext_modules=[
        CUDAExtension(
            "geopref_torch_ext",
            sources=["geopref_torch.cpp", "geopref_c_api.cu"],
            include_dirs=[include],
            extra_compile_args={"cxx": ["-O2"], "nvcc": ["-O3"]},
        )
    ],
    cmdclass={"build_ext": BuildExtension},
)
