"""path_fusion's resampling rule is one rule with one message: the Python
statement (rspnet.ops.reference.resample_mode) and the C++ one
(resample_rule in csrc/common.h) agree on every small size pair."""
import itertools

import pytest
import torch

from rspnet.ops import _backend, path_fusion_ref
from rspnet.ops.reference import resample_mode

SIZES = [(h, w) for h in (1, 2, 3, 4, 6) for w in (1, 2, 3, 4, 6)]


def _python(in_hw, size):
    try:
        return resample_mode(in_hw, size, 1)
    except ValueError as exc:
        return str(exc)


@pytest.mark.skipif(not _backend.has_kernel("path_fusion", "CPU"), reason="rspnet._C not built")
def test_cpp_and_python_rules_agree():
    logits = torch.zeros(2, dtype=torch.float64)
    for in_hw, size in itertools.product(SIZES, SIZES):
        xs = [torch.randn(1, 1, *size, dtype=torch.float64), torch.randn(1, 1, *in_hw, dtype=torch.float64)]
        want = _python(in_hw, size)
        try:
            torch.ops.rspnet.path_fusion(logits, xs, list(size), 1.0)
            got = None
        except ValueError as exc:
            got = str(exc).splitlines()[0]
        if isinstance(want, str):
            assert got == want, (in_hw, size)
        else:
            assert got is None, (in_hw, size, got)


def test_reference_raises_the_rule_message():
    xs = [torch.randn(1, 1, 4, 6), torch.randn(1, 1, 6, 9)]
    with pytest.raises(ValueError) as info:
        path_fusion_ref(torch.zeros(2), xs, (4, 6))
    assert str(info.value) == _python((6, 9), (4, 6))
