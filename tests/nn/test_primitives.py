import pytest
import torch

from rspnet.architecture import OP_NAMES
from rspnet.nn import OPS, PRIMITIVES


def test_primitives_are_darts_eight_in_darts_order():
    assert list(PRIMITIVES) == ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
                                "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"]
    # OPS builds every op an architecture file may name: DARTS's eight and the light set's
    assert set(OPS) == set(OP_NAMES) and set(PRIMITIVES) <= set(OP_NAMES)


@pytest.mark.parametrize("name", OP_NAMES)
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


def test_inverted_residual_candidates():
    """The light set's ops keep the shape, add their input, and their
    parameters are MobileNetV2's: expand, depthwise, project (+ BN)."""
    import torch
    from rspnet.nn import OPS, InvertedResidual
    x = torch.randn(2, 8, 12, 12)
    for name, k, e in [("mbconv_3x3_e3", 3, 3), ("mbconv_5x5_e6", 5, 6)]:
        op = OPS[name](8, True).eval()
        assert isinstance(op, InvertedResidual) and op(x).shape == x.shape
        h = 8 * e
        assert sum(p.numel() for p in op.parameters()) == 8 * h + h * k * k + h * 8 + 2 * (h + h + 8)
        torch.nn.init.zeros_(op.body[-1].weight)   # last BN scale 0: the block is the identity
        assert torch.equal(op(x), x)
