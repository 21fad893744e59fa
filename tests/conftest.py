"""Shared test setup.

Without a GPU, Triton kernels run on CPU tensors through the interpreter,
which must be switched on before triton is first imported.
"""
import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from rspnet.ops import _backend  # noqa: E402  (after TRITON_INTERPRET)


@pytest.fixture
def one_thread():
    """One PyTorch CPU thread for the test (results and timings do not depend
    on the machine's core count), restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def cpu_backends(op: str) -> list[str]:
    """Every backend that can run ``op`` on CPU tensors here. The C++ kernels
    are expected whenever the extension is built: their absence fails the
    tests that need them instead of silently testing less."""
    names = ["reference", "cpp"]
    if _backend.TRITON_OK and _backend.triton_interpreter():
        names.append("triton")
    return names


def gpu_backends(op: str) -> list[str]:
    return ["reference", "cuda", "triton"]


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)

