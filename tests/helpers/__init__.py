"""What several test modules share, in one place (no tests here; pytest
collects only ``test_*.py``, and ``tests/conftest.py`` registers this package
for pytest's assertion rewriting):

* ``architectures``: derived and hand-written architectures to build and train;
* ``training``: the command-line flags of a tiny training run;
* ``threads``: one PyTorch CPU thread for a block (what the suite's autouse
  ``one_thread`` fixture and module-scoped fixtures use);
* ``ops``: the op tests' backends, forward + backward runner and accuracy rule;
* ``cuda_emulation``: the CUDA kernels compiled as plain C++ for CPU tests;
* ``aot``: ahead-of-time compilation of Triton kernels for sm_90;
* ``cuda_static``: static facts about the built CUDA kernels
  (``python -m tests.helpers.cuda_static`` prints the table);
* ``dist_worker``: the entry point ``torchrun`` launches for the data-parallel tests.
"""
import os

#: the checkout's root (the directory holding rspnet/, csrc/, tests/)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
