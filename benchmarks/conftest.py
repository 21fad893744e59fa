"""pytest setup of the CPU micro-benchmarks (``make bench``): benchmarks/ on
the import path (``from memory import peak_bytes``), the ``bench_*.py`` files
collected when the directory is given (``pytest benchmarks``; pytest's default
patterns only match ``test_*.py``), and a ``--quick`` option, tiny shapes and
two rounds, the smoke run of tests/test_benchmarks.py:

    pytest benchmarks/bench_cpu_mixed_sum.py --quick --benchmark-enable
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def pytest_collect_file(file_path, parent):
    # a file named on the command line is collected by pytest itself
    if file_path.name.startswith("bench_") and file_path.suffix == ".py" \
            and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_addoption(parser):
    parser.addoption("--quick", action="store_true", help="benchmarks/: tiny shapes, two rounds (a smoke run)")


@pytest.fixture(scope="session")
def quick(request) -> bool:
    return request.config.getoption("--quick")


@pytest.fixture(scope="session")
def rounds(quick):
    """``rounds(n)``: n benchmark rounds, or 2 with ``--quick``."""
    return lambda n: 2 if quick else n
