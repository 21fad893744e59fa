"""Moved to ``tests/helpers/cuda_static.py``: ``python -m tests.helpers.cuda_static``.

This stub keeps ``python -m tests.cuda_static`` (benchmarks/device_check.sh)
working until the callers name the new module; delete it then."""
from tests.helpers.cuda_static import *  # noqa: F401,F403
from tests.helpers.cuda_static import main

if __name__ == "__main__":
    main()
