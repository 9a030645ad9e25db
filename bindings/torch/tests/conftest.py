import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import geopref_torch  # noqa: E402

DEVICES = ["cpu"]
if torch.cuda.is_available() and geopref_torch.has_cuda_kernels():
    DEVICES.append("cuda")


def pytest_report_header(config):
    return (f"torch {torch.__version__}, geopref_torch devices: {DEVICES} "
            f"(CUDA kernels built: {geopref_torch.has_cuda_kernels()})")


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param
