"""Shared test setup.

Without a GPU, Triton kernels run on CPU tensors through the interpreter,
which must be switched on before triton is first imported.

Every test starts from a torch seed of its own (``seeded``, autouse) and runs
with one PyTorch CPU thread (``one_thread``, autouse), except the op tests
under tests/ops/, which keep the machine's threads; the helpers the test
modules share live in tests/helpers/.
"""
import os
import zlib

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

# a failed assert inside a helper reports its values, as in a test module
pytest.register_assert_rewrite("tests.helpers")

from tests.helpers.threads import single_thread  # noqa: E402

OPS_TESTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ops")


@pytest.fixture(autouse=True)
def seeded(request):
    """Each test starts from its own fixed torch seed (from its id), so the
    random inputs of a failing test are the same when it is run again, alone
    or in the suite, and a check's margin does not depend on the order the
    tests ran in."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(autouse=True)
def one_thread(request):
    """One PyTorch CPU thread for the test, restored after: the tests use tiny
    tensors, for which one thread is faster, and it keeps them quick when
    other processes busy the CPU (OpenMP workers spin-wait: on a shared
    2-core machine two threads are 10x slower); results and timings do not
    depend on the machine's core count. The tests that start a command in a
    subprocess pass it ``--threads 1``; a module- or session-scoped fixture,
    set up before this one, uses ``tests.helpers.threads.single_thread``.

    The op tests (tests/ops/) keep the machine's thread count: the C++
    kernels split their work with at::parallel_for, and those tests are what
    runs the split."""
    if str(request.node.path).startswith(OPS_TESTS + os.sep):
        yield
        return
    with single_thread():
        yield


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
