import torch
import torch.nn as nn
import torch.nn.functional as F

from rspnet.nn import DetailHead, Head, LightHead, make_head, SinglePathBackbone, Stem, TrellisBackbone, layer_nodes, trellis_nodes


def _randomise_bn(head):
    """Running statistics and affine parameters away from the identity, so
    that eval-mode BatchNorm is a real affine map the tests write out."""
    for m in (m for m in head.modules() if isinstance(m, nn.BatchNorm2d)):
        m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
        m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.5, 0.5)
    return head


def bn(x, m):
    """Eval-mode BatchNorm ``m`` of ``x``, written out."""
    return (x - m.running_mean[:, None, None]) / torch.sqrt(m.running_var[:, None, None] + m.eps) \
        * m.weight[:, None, None] + m.bias[:, None, None]


def test_head_matches_its_definition():
    torch.manual_seed(0)
    head = Head([4, 8], num_classes=5, channels=6).double().eval()
    f = [torch.randn(2, 4, 8, 16, dtype=torch.float64), torch.randn(2, 8, 4, 8, dtype=torch.float64)]
    up = F.interpolate(f[1], size=(8, 16), mode="bilinear", align_corners=False)
    logits = head.classifier(head.fuse(torch.cat([f[0], up], 1)))
    expected = F.interpolate(logits, size=(32, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(head(f, (32, 64)), expected, rtol=0, atol=0)


def test_light_head_matches_its_definition():
    """Plain PyTorch, written out: per-map ReLU → 1×1 conv → BN (eval) at the
    map's own resolution, bilinear to 1/4 and averaged, ReLU, 3×3 conv → BN →
    ReLU, times sigmoid(1×1 conv of the coarsest map's mean), classifier."""
    torch.manual_seed(0)
    head = LightHead([4, 8, 16], num_classes=5, channels=6).double()
    _randomise_bn(head).eval()
    f = [torch.randn(2, c, 8 >> s, 16 >> s, dtype=torch.float64) for s, c in enumerate([4, 8, 16])]

    paths = []
    for x, proj in zip(f, head.projections):
        _, conv, norm = proj
        y = bn(F.conv2d(torch.relu(x), conv.weight), norm)
        paths.append(F.interpolate(y, size=(8, 16), mode="bilinear", align_corners=False))
    fused = torch.stack(paths).mean(0)
    conv, norm, _ = head.refine
    y = torch.relu(bn(F.conv2d(torch.relu(fused), conv.weight, padding=1), norm))
    gate = torch.sigmoid(F.conv2d(torch.relu(f[2]).mean((2, 3), keepdim=True), head.context.weight,
                                  head.context.bias))
    logits = F.conv2d(y * gate, head.classifier.weight, head.classifier.bias)
    expected = F.interpolate(logits, size=(32, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(head(f, (32, 64)), expected, rtol=1e-12, atol=1e-12)


def test_detail_head_matches_its_definition():
    """Plain PyTorch, written out: the light head's gated 1/4 map (its
    definition above, through the head's own modules), bilinear to the stem's
    1/2 map, plus ReLU → 1×1 conv → BN of that map, ReLU, classifier at 1/2,
    bilinear to the image."""
    torch.manual_seed(0)
    head = DetailHead([3, 4, 8], num_classes=5, channels=6).double()
    _randomise_bn(head).eval()
    half = torch.randn(2, 3, 16, 32, dtype=torch.float64)
    f = [torch.randn(2, c, 8 >> s, 16 >> s, dtype=torch.float64) for s, c in enumerate([4, 8])]

    paths = []
    for x, proj in zip(f, head.projections):
        _, conv, norm = proj
        paths.append(F.interpolate(bn(F.conv2d(torch.relu(x), conv.weight), norm), size=(8, 16),
                                   mode="bilinear", align_corners=False))
    conv, norm, _ = head.refine
    y = torch.relu(bn(F.conv2d(torch.relu(torch.stack(paths).mean(0)), conv.weight, padding=1), norm))
    y = y * torch.sigmoid(F.conv2d(torch.relu(f[1]).mean((2, 3), keepdim=True), head.context.weight,
                                   head.context.bias))
    _, conv, norm = head.detail
    y = F.interpolate(y, size=(16, 32), mode="bilinear", align_corners=False) \
        + bn(F.conv2d(torch.relu(half), conv.weight), norm)
    logits = F.conv2d(torch.relu(y), head.classifier.weight, head.classifier.bias)
    expected = F.interpolate(logits, size=(32, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(head([half] + f, (32, 64)), expected, rtol=1e-12, atol=1e-12)
    assert head.scores([half] + f, (32, 64)).shape[-2:] == (16, 32)


def test_a_head_that_reads_the_stem_needs_its_channels():
    import pytest
    with pytest.raises(ValueError, match="reads the stem's 1/2-scale map: give stem_channels"):
        make_head("detail", [4, 8], 5, 6)
    assert isinstance(make_head("detail", [4, 8], 5, 6, stem_channels=3).detail[1], nn.Conv2d)
    assert make_head("detail", [4, 8], 5, 6, stem_channels=3).detail[1].in_channels == 3


def test_trellis_nodes_follow_auto_deeplab_reachability():
    nodes = trellis_nodes(4, 4)
    assert nodes == [(1, 0), (1, 1), (2, 0), (2, 1), (2, 2), (3, 0), (3, 1), (3, 2), (3, 3),
                     (4, 0), (4, 1), (4, 2), (4, 3)]
    assert layer_nodes(nodes, 0) == [(0, 0)]
    assert layer_nodes(nodes, 2) == [(2, 0), (2, 1), (2, 2)]


class Tag(nn.Module):
    """Adds a per-node constant so the test can trace which block ran."""

    def __init__(self, c):
        super().__init__()
        self.c = c

    def forward(self, x, *args):
        assert x.shape[1] == self.c
        return x + 1.0


def test_single_path_backbone_shapes():
    stem = Stem(4)
    body = SinglePathBackbone(4, 4, Tag)
    x = torch.randn(2, 3, 64, 128)
    s = stem(x)
    assert s.shape == (2, 4, 16, 32)
    assert [f.shape for f in body(s)] == [(2, 4 * 2 ** i, 16 >> i, 32 >> i) for i in range(4)]


def test_trellis_backbone_fuses_only_the_given_sources():
    nodes = [(1, 0), (1, 1), (2, 1)]
    sources = [[(0, 0)], [(0, 0)], [(1, 0), (1, 1)]]
    body = TrellisBackbone(2, nodes, sources, Tag).double().eval()
    stem = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    logits = [torch.zeros(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64),
              torch.tensor([0.3, -0.2], dtype=torch.float64)]
    out = body(stem, logits)
    assert len(out) == 1 and out[0].shape == (1, 4, 4, 4)
    pams = body.pams
    h10 = pams[0]([stem], logits[0], (8, 8)) + 1
    h11 = pams[1]([stem], logits[1], (4, 4)) + 1
    expected = pams[2]([h10, h11], logits[2], (4, 4)) + 1
    torch.testing.assert_close(out[0], expected, rtol=0, atol=0)
