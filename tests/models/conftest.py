import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """These tests use tiny tensors: one thread is faster, and it keeps them
    quick when other processes busy the CPU (OpenMP workers spin-wait)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
