"""The inference-only modules of the inference form
(``rspnet.models.inference``): strided-sum average pooling against
``F.avg_pool2d``, the channels-last stem against the stem as it is, the
channels-last final upsampling, in-place ReLUs, RSP blocks without their
channel shuffle; each folded network against
the eval-mode original (the unfolded network is the reference); the training
network is left as it was."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from rspnet.architecture import KeptNode
from rspnet.models import RSPNet, inference_form
import rspnet.nn.rsp as rsp_module
from rspnet.models.inference import (ChannelsLast, InferenceHead, InferencePathAttention, UnshuffledRSPBlock,
                                     shuffle_permutation, strided_mean)
from rspnet.nn import LightHead, PathAttention, RSPBlock, Stem
from rspnet.ops.reference import channel_shuffle_ref

from .test_fold import randomise_bn
from .test_fold_cells import cell_architecture, assert_same
from .test_rspnet import NODES


@pytest.mark.parametrize("kh, kw", [(2, 2), (4, 4), (2, 1), (1, 4), (8, 2)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_strided_mean_is_average_pooling(kh, kw, dtype):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 24, dtype=dtype)
    expected = F.avg_pool2d(x, (kh, kw))
    for inp in (x, x.contiguous(memory_format=torch.channels_last), x[:, 1:]):
        got = strided_mean(inp, kh, kw)
        tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else {}
        torch.testing.assert_close(got, F.avg_pool2d(inp, (kh, kw)), **tol)
    torch.testing.assert_close(strided_mean(x, kh, kw), expected, **tol)


def test_strided_mean_does_not_write_into_its_input():
    x = torch.randn(1, 2, 4, 4)
    before = x.clone()
    strided_mean(x, 2, 2)
    strided_mean(x, 1, 1)
    assert torch.equal(x, before)
    out = strided_mean(x, 1, 1)
    out.add_(1)
    assert torch.equal(x, before)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_channels_last_wrapper_gives_the_same_output_in_the_input_layout(layout):
    torch.manual_seed(0)
    stem = randomise_bn(Stem(8)).eval()
    wrapped = ChannelsLast(randomise_bn(Stem(8)).eval())
    wrapped.module.load_state_dict(stem.state_dict())
    x = torch.randn(2, 3, 32, 48).contiguous(memory_format=layout)
    with torch.no_grad():
        got, expected = wrapped(x), stem(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert got.is_contiguous(memory_format=layout)


def _forbid(monkeypatch, module, name: str) -> None:
    """Make ``module.name`` fail the test if the folded network calls it."""
    def forbidden(*args, **kwargs):
        raise AssertionError(f"the folded network called {name}")

    monkeypatch.setattr(module, name, forbidden)


def _pool_first_light(layers: int = 3):
    nodes = NODES + (KeptNode((3, 0), (((2, 0), 0.6), ((2, 2), 0.4))),
                     KeptNode((3, 1), (((2, 0), 0.5), ((2, 2), 0.5))))
    return dataclasses.replace(cell_architecture("partly-skip"), layers=layers, nodes=nodes, head="light",
                               pool_first=True)


def test_folded_network_runs_the_inference_choices(monkeypatch):
    """The folded network wraps its stem, pools its pool-first paths with
    strided sums (``F.avg_pool2d`` is not called), upsamples channels-last,
    and gives the eval network's outputs."""
    torch.manual_seed(0)
    model = randomise_bn(RSPNet(_pool_first_light(), num_classes=5)).eval()
    folded = inference_form(model)
    assert isinstance(folded.stem, ChannelsLast) and isinstance(model.stem, Stem)
    pams = [m for m in folded.modules() if isinstance(m, InferencePathAttention)]
    assert pams and all(p.pool_first for p in pams)
    assert not any(isinstance(m, PathAttention) for m in folded.modules())
    assert isinstance(folded.head, InferenceHead) and isinstance(model.head, LightHead)
    x = torch.randn(2, 3, 64, 128)
    with torch.no_grad():
        expected = model(x)
        _forbid(monkeypatch, F, "avg_pool2d")
        got = folded(x)
    assert_same(got, expected)
    assert got.is_contiguous(memory_format=torch.channels_last)


def test_bn_folding_alone_keeps_layouts_and_kernels():
    model = RSPNet(_pool_first_light(), num_classes=5).eval()
    bn_only = inference_form(model, batchnorm_only=True)
    assert isinstance(bn_only.stem, Stem)
    assert not any(isinstance(p, InferencePathAttention) for p in bn_only.modules())
    assert isinstance(bn_only.head, LightHead)


def test_in_place_relus_only_without_a_graph():
    """The folded trellis rectifies node outputs in place under no_grad and
    out of place when autograd records: the outputs agree, and a backward
    through the folded network runs."""
    torch.manual_seed(0)
    model = randomise_bn(RSPNet(_pool_first_light(), num_classes=5)).eval()
    folded = inference_form(model)
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        quiet = folded(x)
    with torch.inference_mode():
        inference = folded(x)
    recorded = folded(x.requires_grad_())
    recorded.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    torch.testing.assert_close(quiet, recorded.detach(), rtol=0, atol=0)
    torch.testing.assert_close(inference, quiet, rtol=0, atol=0)


def test_shuffle_permutation_is_the_channel_shuffle():
    x = torch.randn(2, 12, 3, 4)
    for groups in (2, 3, 4):
        torch.testing.assert_close(x[:, shuffle_permutation(12, groups)], channel_shuffle_ref(x, groups),
                                   rtol=0, atol=0)


@pytest.mark.parametrize("head", ["concat", "light", "detail"])
@pytest.mark.parametrize("grad", [False, True])
def test_unshuffled_blocks_give_the_eval_outputs(monkeypatch, head, grad):
    """Every trellis block of the folded network skips its shuffle
    (``channel_merge`` is not called) and the permuted readers give the eval
    network's outputs, in place (no graph) and out of place (autograd on)."""
    arch = dataclasses.replace(_pool_first_light(), head=head, pool_first=head != "concat")
    torch.manual_seed(0)
    model = randomise_bn(RSPNet(arch, num_classes=5)).eval()
    folded = inference_form(model)
    assert all(isinstance(b, UnshuffledRSPBlock) for b in folded.backbone.blocks)
    assert all(isinstance(b, RSPBlock) for b in model.backbone.blocks)
    assert folded.inference_report.shuffles_moved == len(model.backbone.blocks)
    x = torch.randn(2, 3, 64, 128)
    with torch.no_grad():
        expected = model(x)
    _forbid(monkeypatch, rsp_module, "channel_merge")
    with torch.set_grad_enabled(grad):
        got = folded(x)
    assert_same(got.detach(), expected)


def test_nested_rsp_blocks_keep_their_shuffle():
    """Depth 2: the outer block's output is not a two-part concatenation of
    the cell's, so it keeps its shuffle; the outputs are the eval network's."""
    arch = dataclasses.replace(_pool_first_light(), rsp_depth=2)
    torch.manual_seed(0)
    model = randomise_bn(RSPNet(arch, num_classes=5)).eval()
    folded = inference_form(model)
    assert not any(isinstance(b, UnshuffledRSPBlock) for b in folded.backbone.blocks)
    assert folded.inference_report.shuffles_moved == 0
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        assert_same(folded(x), model(x))


def test_folding_twice_wraps_the_stem_once():
    model = RSPNet(_pool_first_light(), num_classes=5).eval()
    twice = inference_form(inference_form(model))
    assert isinstance(twice.stem, ChannelsLast) and isinstance(twice.stem.module, Stem)


# what the training blocks carried before issue 19, set by the inference form
INFERENCE_FLAGS = ("unshuffled", "strided_pool", "relu_outputs", "upsample_channels_last")


@pytest.mark.parametrize("head", ["concat", "light", "detail"])
def test_the_training_network_is_left_as_it_was(head):
    """Building and running the inference form changes nothing of the
    network it was built from: the same modules, bit-identical parameters,
    buffers and outputs, no storage shared, and no inference flag on the
    training blocks."""
    arch = dataclasses.replace(_pool_first_light(), head=head, pool_first=head != "concat")
    torch.manual_seed(0)
    model = randomise_bn(RSPNet(arch, num_classes=5)).eval()
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        before = model(x)
    modules = [(name, type(m)) for name, m in model.named_modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    folded = inference_form(model)
    with torch.no_grad():   # the folded network writes in place without a graph
        folded(x)
    with torch.inference_mode():
        folded(x)
    assert [(name, type(m)) for name, m in model.named_modules()] == modules
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    with torch.no_grad():
        assert torch.equal(model(x), before)
    ours = {t.data_ptr() for t in [*model.parameters(), *model.buffers()]}
    assert not ours & {t.data_ptr() for t in [*folded.parameters(), *folded.buffers()]}
    assert not any(hasattr(m, flag) for m in model.modules() for flag in INFERENCE_FLAGS)
    assert model.training is False and all(not m.training for m in folded.modules())


def test_inplace_converts_the_network_itself():
    model = RSPNet(_pool_first_light(), num_classes=5).eval()
    folded = inference_form(model, inplace=True)
    assert folded is model and isinstance(model.stem, ChannelsLast)


def test_the_report_counts_each_rewrite():
    torch.manual_seed(0)
    model = randomise_bn(RSPNet(_pool_first_light(), num_classes=5)).eval()
    backbone = model.backbone
    report = inference_form(model).inference_report
    coarser = sum(source[1] < node[1] for node, sources in zip(backbone.nodes, backbone.sources)
                  for source in sources)
    assert coarser > 0
    assert (report.relus_shared, report.shuffles_moved, report.pools_strided) == (
        sum(len(pam.projections) for pam in backbone.pams), len(backbone.blocks), coarser)
    assert (report.stems_channels_last, report.heads_channels_last) == (1, 1)
    assert report.cells_merged == len(backbone.blocks) and report.batchnorms_left == 0
    assert f"pools strided: {coarser}" in str(report)


def test_fold_batchnorm_is_the_inference_form_under_its_former_name():
    """``fold_batchnorm`` and ``FoldCount`` (the names before issue 19): the
    same network, its report also as ``bn_folding`` with FoldCount's fields."""
    from rspnet.models import FoldCount, InferenceFormReport, fold_batchnorm

    torch.manual_seed(0)
    model = randomise_bn(RSPNet(_pool_first_light(), num_classes=5)).eval()
    old, new = fold_batchnorm(model), inference_form(model)
    assert FoldCount is InferenceFormReport and old.bn_folding == new.inference_report
    report = new.inference_report
    assert (old.bn_folding.folded, old.bn_folding.left, old.bn_folding.cells) == (
        report.batchnorms_folded, report.batchnorms_left, report.cells_merged)
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        torch.testing.assert_close(old(x), new(x), rtol=0, atol=0)
    assert isinstance(fold_batchnorm(model, cells=False).stem, Stem)
