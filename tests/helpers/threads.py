"""One PyTorch CPU thread for a block of code, the count restored after."""
import contextlib

import torch


@contextlib.contextmanager
def single_thread():
    """One intra-op thread inside the block: the tests use tiny tensors, for
    which one thread is faster, and on a shared 2-core machine two threads
    spin against each other and against other jobs (OpenMP workers
    spin-wait; 10x slower). Results and timings then do not depend on the
    machine's core count. The CLIs' ``--threads 1`` does the same."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
