import pytest
import torch
import torch.nn.functional as F

from rspnet.nn import PathAttention


def test_path_attention_matches_its_definition():
    torch.manual_seed(0)
    pam = PathAttention([4, 8, 16], 8).double()
    xs = [torch.randn(2, 4, 16, 16, dtype=torch.float64), torch.randn(2, 8, 8, 8, dtype=torch.float64),
          torch.randn(2, 16, 4, 4, dtype=torch.float64)]
    logits = torch.randn(3, dtype=torch.float64)
    w = torch.softmax(logits, 0)
    p = [proj(x) for proj, x in zip(pam.projections, xs)]
    expected = (w[0] * F.avg_pool2d(p[0], 2) + w[1] * p[1]
                + w[2] * F.interpolate(p[2], size=(8, 8), mode="bilinear", align_corners=False))
    torch.testing.assert_close(pam(xs, logits, (8, 8)), expected, rtol=1e-12, atol=1e-13)
    # the projection runs at the path's own resolution
    assert p[0].shape == (2, 8, 16, 16) and p[2].shape == (2, 8, 4, 4)


def test_logit_gradients_flow_and_shapes_are_checked():
    pam = PathAttention([4, 4], 4)
    xs = [torch.randn(1, 4, 4, 4), torch.randn(1, 4, 2, 2)]
    logits = torch.zeros(2, requires_grad=True)
    pam(xs, logits, (4, 4)).square().sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="2 paths"):
        pam(xs, torch.zeros(3), (4, 4))


@pytest.mark.parametrize("node_size", [(16, 16), (4, 4), (2, 2)])
def test_normalized_paths_reach_the_node_at_unit_rms(node_size):
    """``normalize=True``: whichever path the logits pick alone, the fused map
    has a root mean square of 1 at the node's resolution (pooled paths are no
    longer quieter than the node's own scale)."""
    torch.manual_seed(0)
    sizes = [(16, 16), (8, 8), (4, 4), (2, 2)]
    pam = PathAttention([3, 5, 6, 7], 4, affine=False, normalize=True).double()
    inputs = [torch.randn(2, c, *s, dtype=torch.float64) for c, s in zip([3, 5, 6, 7], sizes)]
    for p in range(4):
        logits = torch.zeros(4, dtype=torch.float64)
        logits[p] = 1e4   # softmax puts weight 1.0 on path p (exactly, in float64)
        out = pam(inputs, logits, node_size)
        assert out.pow(2).mean().sqrt().item() == pytest.approx(1.0, rel=1e-10), p
    plain = PathAttention([3, 5, 6, 7], 4, affine=False).double()
    plain.load_state_dict(pam.state_dict())
    logits = torch.randn(4, dtype=torch.float64)
    assert not torch.allclose(plain(inputs, logits, node_size), pam(inputs, logits, node_size))
