"""rspnet.models.fold, the first step of ``inference_form``: BatchNorm folded
into the preceding convolution gives the eval-mode network's outputs (fp32
rounding), with the folded weights of the textbook formula; BatchNorms that
no convolution directly precedes are left and counted."""
import random

import pytest
import torch
import torch.nn as nn

from rspnet.models import RSPNet, count_flops, inference_form
from rspnet.nn import Cell, Head, set_memory_mode
from rspnet.search import SearchConfig
from rspnet.search.baseline import random_architecture

from .test_rspnet import small_arch


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters, as after training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d) and m.track_running_stats:
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.25)
            if isinstance(m, nn.BatchNorm2d) and m.affine:
                m.weight.copy_(torch.randn(m.num_features, generator=g) * 0.5 + 1)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.3)
    return model


@pytest.mark.parametrize("affine, bias, groups", [(True, False, 1), (False, True, 1), (True, True, 4),
                                                  (False, False, 4)])
def test_conv_bn_folds_to_the_formula(affine, bias, groups):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 3, padding=1, bias=bias, groups=groups)
    bn = nn.BatchNorm2d(8, affine=affine, eps=1e-3)
    model = randomise_bn(nn.Sequential(conv, bn)).eval()
    folded = inference_form(model)
    assert isinstance(folded[1], nn.Identity) and isinstance(model[1], nn.BatchNorm2d)   # a copy
    report = folded.inference_report
    assert report.batchnorms_folded == 1 and report.batchnorms_left == 0

    # the formula, in float64 from the original tensors
    w, mean, var = conv.weight.double(), bn.running_mean.double(), bn.running_var.double()
    gamma = bn.weight.double() if affine else torch.ones(8, dtype=torch.float64)
    beta = bn.bias.double() if affine else torch.zeros(8, dtype=torch.float64)
    b = conv.bias.double() if bias else torch.zeros(8, dtype=torch.float64)
    scale = gamma / torch.sqrt(var + 1e-3)
    torch.testing.assert_close(folded[0].weight.double(), w * scale[:, None, None, None],
                               rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(folded[0].bias.double(), (b - mean) * scale + beta, rtol=1e-6, atol=1e-7)

    # and the outputs: BN's eval formula written out on the conv's output
    x = torch.randn(2, 4, 9, 7)
    with torch.no_grad():
        y = conv(x)
        expected = (y - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + 1e-3)
        if affine:
            expected = expected * bn.weight[:, None, None] + bn.bias[:, None, None]
        torch.testing.assert_close(folded(x), expected)


def test_only_batchnorms_right_after_a_conv_are_folded():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4),                     # folded
        nn.ReLU(), nn.BatchNorm2d(4),                                          # after a ReLU: left
        nn.Sequential(nn.Conv2d(4, 4, 1, bias=False), nn.BatchNorm2d(4, affine=False)),   # folded
        nn.MaxPool2d(3, 1, 1), nn.BatchNorm2d(4),                              # after pooling: left
        nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4, track_running_stats=False),     # batch statistics: left
        nn.Conv2d(4, 6, 1), nn.BatchNorm2d(6), nn.BatchNorm2d(6),              # the first folded only
    )
    randomise_bn(model)
    folded = inference_form(model)
    report = folded.inference_report
    assert (report.batchnorms_folded, report.batchnorms_left) == (3, 4)
    assert str(folded.inference_report) == "3 BatchNorm folded, 4 left"
    kinds = [type(m).__name__ for m in folded]
    assert kinds == ["Conv2d", "Identity", "ReLU", "BatchNorm2d", "Sequential", "MaxPool2d", "BatchNorm2d",
                     "Conv2d", "BatchNorm2d", "Conv2d", "Identity", "BatchNorm2d"]
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model.eval()(x))
    assert all(isinstance(m, nn.BatchNorm2d) for m in (model[1], model[4][1]))   # the original is kept


def test_search_cell_keeps_the_batchnorms_after_pooling_and_skip():
    """DARTS's search cell: the edges' two sep convs (2 BN each) and two dil
    convs (1 each) fold, the BN after each pooling and after skip_connect
    (not after a conv) stays; 10 edges and the projection's BN."""
    torch.manual_seed(0)
    cell = randomise_bn(Cell(4, steps=4)).eval()
    folded = inference_form(cell)
    report = folded.inference_report
    assert (report.batchnorms_folded, report.batchnorms_left) == (10 * 6 + 1, 10 * 3)
    x = torch.randn(2, 4, 8, 8)
    weights = torch.softmax(torch.randn(10, 8), -1)
    with torch.no_grad():
        torch.testing.assert_close(folded(x, weights), cell(x, weights))


def _networks():
    yield "trellis", small_arch()
    yield "single-path", small_arch(nodes=None)
    config = SearchConfig(channels=4, layers=4)
    rng = random.Random(3)
    for i in range(3):
        yield f"random-{i}", random_architecture(config, rng)


@pytest.mark.parametrize("name, arch", list(_networks()), ids=[n for n, _ in _networks()])
def test_folded_network_gives_the_eval_outputs(name, arch):
    torch.manual_seed(0)
    model = randomise_bn(RSPNet(arch, num_classes=5)).eval()
    bns = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    folded = inference_form(model)
    # in the derived network every BatchNorm directly follows a convolution
    report = folded.inference_report
    assert (report.batchnorms_folded, report.batchnorms_left) == (bns, 0)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected, got = model(x), folded(x)
    torch.testing.assert_close(got, expected)
    # FlopCounterMode counts convolutions, not BatchNorms nor bias additions;
    # merging linear cell states (on by default) can only remove convolution work
    bn_only = inference_form(model, batchnorm_only=True)
    assert count_flops(bn_only, (64, 96)) == count_flops(model, (64, 96)) >= count_flops(folded, (64, 96))


def test_folded_head_in_recompute_mode_adds_the_folded_bias():
    torch.manual_seed(0)
    head = randomise_bn(Head([4, 8], num_classes=3, channels=6)).eval()
    folded = set_memory_mode(inference_form(head), "recompute")
    features = [torch.randn(2, 4, 8, 8), torch.randn(2, 8, 4, 4)]
    with torch.no_grad():
        expected = head(features, (32, 32))
    torch.testing.assert_close(folded(features, (32, 32)), expected)
