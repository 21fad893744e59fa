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


def _randomise_bn(module):
    for bn in (m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
        if bn.weight is not None:
            bn.weight.data.uniform_(-1.5, 1.5), bn.bias.data.uniform_(-0.5, 0.5)


def test_pool_first_is_the_same_function_in_eval_mode():
    """Pooling before the 1×1 conv + BN of a path into a coarser node equals
    pooling after them (eval mode); paths that stay or go up are untouched."""
    torch.manual_seed(0)
    plain = PathAttention([4, 8, 8, 16], 8).double()
    _randomise_bn(plain)
    pooled = PathAttention([4, 8, 8, 16], 8, pool_first=True).double()
    pooled.load_state_dict(plain.state_dict())
    plain.eval(), pooled.eval()
    xs = [torch.randn(2, 4, 32, 32, dtype=torch.float64), torch.randn(2, 8, 16, 16, dtype=torch.float64),
          torch.randn(2, 8, 8, 8, dtype=torch.float64), torch.randn(2, 16, 4, 4, dtype=torch.float64)]
    logits = torch.randn(4, dtype=torch.float64)
    torch.testing.assert_close(pooled(xs, logits, (8, 8)), plain(xs, logits, (8, 8)), rtol=1e-12, atol=1e-12)
    # what it runs: the conv of the path from 32×32 sees 8×8 pixels (4× pooled), after the ReLU
    seen = {}
    hook = pooled.projections[0][1].register_forward_hook(lambda m, i, o: seen.update(input=i[0]))
    pooled(xs, logits, (8, 8))
    hook.remove()
    torch.testing.assert_close(seen["input"], F.avg_pool2d(torch.relu(xs[0]), 4), rtol=0, atol=0)
    assert "pool_first=True" in repr(pooled) and "pool_first" not in repr(plain)


def test_pool_first_differs_in_training_by_the_bn_statistics():
    """In training BN normalises the pooled map (written out: batch mean and
    biased variance of conv(avgpool(relu x))), which the other order does not."""
    torch.manual_seed(0)
    pam = PathAttention([4], 4, affine=False, pool_first=True).double().train()
    plain = PathAttention([4], 4, affine=False).double().train()
    plain.load_state_dict(pam.state_dict())
    x = torch.randn(8, 4, 32, 32, dtype=torch.float64)
    zero = torch.zeros(1, dtype=torch.float64)
    z = F.conv2d(F.avg_pool2d(torch.relu(x), 8), pam.projections[0][1].weight)
    mean, var = z.mean((0, 2, 3), keepdim=True), z.var((0, 2, 3), unbiased=False, keepdim=True)
    expected = (z - mean) / torch.sqrt(var + pam.projections[0][2].eps)
    torch.testing.assert_close(pam([x], zero, (4, 4)), expected, rtol=1e-10, atol=1e-10)
    assert (plain([x], zero, (4, 4)) - expected).abs().max() > 0.1


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
