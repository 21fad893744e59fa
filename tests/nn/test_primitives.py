import pytest
import torch

from rspnet.nn import OPS, PRIMITIVES


def test_primitives_are_darts_eight_in_darts_order():
    assert list(PRIMITIVES) == ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
                                "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"]
    assert set(OPS) == set(PRIMITIVES)


@pytest.mark.parametrize("name", PRIMITIVES)
@pytest.mark.parametrize("affine", [False, True])
def test_every_op_keeps_the_shape(name, affine):
    x = torch.randn(2, 6, 7, 9)
    op = OPS[name](6, affine)
    assert op(x).shape == x.shape
    has_affine = any(getattr(m, "affine", False) for m in op.modules())
    assert has_affine == (affine and "conv" in name)


def test_none_is_zero_and_skip_is_identity():
    x = torch.randn(2, 3, 4, 4)
    assert torch.equal(OPS["none"](3, False)(x), torch.zeros_like(x))
    assert OPS["skip_connect"](3, False)(x) is x
