"""Moved: the training tests are in tests/train/, the helpers they shared in
tests/helpers/. This stub holds no tests; it keeps ``from .test_train import
TINY, make_architecture`` in tests/test_evaluate.py working, and goes once
that module imports them from tests.helpers."""
from tests.helpers.architectures import make_architecture  # noqa: F401
from tests.helpers.training import TINY  # noqa: F401
