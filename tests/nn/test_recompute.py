"""The ``recompute`` memory mode outside the mixed edges: fused upsampling +
cross-entropy, the head, the stem and the trellis (rspnet/nn/recompute.py)."""
import copy

import pytest
import torch
import torch.nn.functional as F

from rspnet.nn import (Cell, DerivedCell, DetailHead, Genotype, Head, LightHead, MixedOp, RSPBlock, Stem, TrellisBackbone,
                       layer_nodes, set_memory_mode, trellis_nodes, upsampled_cross_entropy)
from rspnet.nn.recompute import Recomputable, labelled_cross_entropy

F64 = dict(rtol=1e-10, atol=1e-12)


def _labels(n, h, w, classes, ignored=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n, h, w), generator=g)
    if ignored:
        y[:, :3] = 255
        y[0, :, -2:] = 255
    return y


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("size", [(32, 64), (29, 37)])
def test_upsampled_cross_entropy_matches_upsample_then_cross_entropy(dtype, size):
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 8, 16, dtype=dtype, requires_grad=True)
    labels = _labels(3, *size, classes=5)
    ref = F.cross_entropy(F.interpolate(logits, size=size, mode="bilinear", align_corners=False),
                          labels, ignore_index=255)
    out = upsampled_cross_entropy(logits, labels, ignore_index=255)
    g_ref, = torch.autograd.grad(2.5 * ref, logits)
    g_out, = torch.autograd.grad(2.5 * out, logits)
    tol = F64 if dtype == torch.float64 else {}
    torch.testing.assert_close(out, ref, **tol)
    torch.testing.assert_close(g_out, g_ref, **tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_weighted_upsampled_cross_entropy_matches_the_weighted_reference(dtype):
    """With class weights: the weighted mean of F.cross_entropy(weight=) on
    the upsampled scores, value and gradient (a zero weight included)."""
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 8, 16, dtype=dtype, requires_grad=True)
    labels = _labels(3, 29, 37, classes=5)
    weight = torch.tensor([0.5, 3.0, 0.0, 1.5, 8.0], dtype=dtype)
    up = F.interpolate(logits, size=(29, 37), mode="bilinear", align_corners=False)
    ref = F.cross_entropy(up, labels, weight=weight, ignore_index=255)
    out = upsampled_cross_entropy(logits, labels, ignore_index=255, weight=weight)
    g_ref, = torch.autograd.grad(1.7 * ref, logits)
    g_out, = torch.autograd.grad(1.7 * out, logits)
    tol = F64 if dtype == torch.float64 else {}
    torch.testing.assert_close(out, ref, **tol)
    torch.testing.assert_close(g_out, g_ref, **tol)
    unweighted = upsampled_cross_entropy(logits, labels, ignore_index=255)
    assert not torch.allclose(out, unweighted)   # the weights change the loss


def test_upsampled_cross_entropy_without_labelled_pixels():
    """No labelled pixel: loss 0 and zero gradients (F.cross_entropy's mean
    would be 0 / 0 = nan, which a run takes for a divergence)."""
    logits = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.full((2, 16, 16), 255)
    out = upsampled_cross_entropy(logits, labels, ignore_index=255)
    up = F.interpolate(logits, size=(16, 16), mode="bilinear")
    assert F.cross_entropy(up, labels, ignore_index=255).isnan()
    assert out.item() == 0.0
    g_out, = torch.autograd.grad(out, logits)
    assert torch.count_nonzero(g_out) == 0


def test_labelled_cross_entropy_is_the_mean_over_labelled_pixels():
    scores = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    labels = torch.randint(0, 4, (2, 5, 5))
    labels[0, :2] = 255
    torch.testing.assert_close(labelled_cross_entropy(scores, labels, 255),
                               F.cross_entropy(scores, labels, ignore_index=255), **F64)
    everything_void = torch.full_like(labels, 255)
    assert labelled_cross_entropy(scores, everything_void, 255).item() == 0.0


def _saved_bytes(fn, shapes=None):
    """Bytes of the distinct storages autograd keeps for backward while running
    ``fn``, by address (inside an activation checkpoint, the checkpoint's own
    hooks keep nothing; the checkpoint keeps references to its inputs)."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        if shapes is not None:
            shapes.add(tuple(t.shape))
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, seen


def _bn_counts(module):
    return {int(m.num_batches_tracked) for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)}


def _compare(store, recompute, run, inputs_fn, dtype=torch.float64):
    """``run(model, *inputs)`` → a scalar; loss, gradients of the inputs and
    the parameters, and the buffers afterwards must agree."""
    results = []
    for model in (store, recompute):
        inputs = inputs_fn()
        loss = run(model, *inputs)
        wrt = [x for x in inputs if x.requires_grad] + list(model.parameters())
        results.append((loss, torch.autograd.grad(loss, wrt)))
    (l_s, g_s), (l_r, g_r) = results
    tol = F64 if dtype == torch.float64 else {}
    torch.testing.assert_close(l_r, l_s, **tol)
    assert len(g_s) == len(g_r)
    for a, b in zip(g_r, g_s):
        torch.testing.assert_close(a, b, **tol)
    for (name, a), b in zip(store.named_buffers(), recompute.buffers()):
        torch.testing.assert_close(b, a, **tol, msg=name)
    assert _bn_counts(store) == _bn_counts(recompute) == {1}  # the recompute counted no batch


def _head_pair(dtype=torch.float64, kind=Head):
    torch.manual_seed(0)
    store = kind(([3] if kind.reads_stem else []) + [4, 8, 16], num_classes=5, channels=6).to(dtype)
    return store, set_memory_mode(copy.deepcopy(store), "recompute")


def _head_inputs(dtype=torch.float64, kind=Head):
    """The maps of a 32x64 image at 1/4, 1/8, 1/16 (after the stem's 1/2
    map for a head that reads it)."""
    g = torch.Generator().manual_seed(1)
    half = [torch.randn(2, 3, 16, 32, generator=g, dtype=dtype).requires_grad_()] if kind.reads_stem else []
    return half + [torch.randn(2, c, 8 >> s, 16 >> s, generator=g, dtype=dtype).requires_grad_()
                   for s, c in enumerate([4, 8, 16])]


@pytest.mark.parametrize("kind", [Head, LightHead, DetailHead])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_head_loss_store_and_recompute_agree(dtype, kind):
    store, recompute = _head_pair(dtype, kind)
    labels = _labels(2, 32, 64, classes=5)
    _compare(store, recompute, lambda m, *f: m.loss(list(f), labels, ignore_index=255),
             lambda: _head_inputs(dtype, kind), dtype)


@pytest.mark.parametrize("kind", [Head, LightHead, DetailHead])
def test_weighted_head_loss_store_and_recompute_agree(kind):
    store, recompute = _head_pair(torch.float64, kind)
    labels = _labels(2, 32, 64, classes=5)
    weight = torch.tensor([0.3, 2.0, 1.0, 5.0, 0.7], dtype=torch.float64)
    _compare(store, recompute, lambda m, *f: m.loss(list(f), labels, ignore_index=255, weight=weight),
             lambda: _head_inputs(kind=kind), torch.float64)


@pytest.mark.parametrize("kind", [Head, LightHead, DetailHead])
def test_head_forward_store_and_recompute_agree(kind):
    store, recompute = _head_pair(kind=kind)
    grad = torch.randn(2, 5, 32, 64, dtype=torch.float64)
    _compare(store, recompute, lambda m, *f: (m(list(f), (32, 64)) * grad).sum(),
             lambda: _head_inputs(kind=kind))
    store.eval(), recompute.eval()
    with torch.no_grad():
        f = _head_inputs(kind=kind)
        torch.testing.assert_close(recompute(f, (32, 64)), store(f, (32, 64)), **F64)


def test_head_store_loss_is_plain_cross_entropy():
    store, _ = _head_pair()
    f, labels = _head_inputs(), _labels(2, 32, 64, classes=5)
    expected = F.cross_entropy(store(f, (32, 64)), labels, ignore_index=255)
    torch.testing.assert_close(store.loss(f, labels, ignore_index=255), expected, rtol=0, atol=0)


def test_recompute_head_keeps_no_full_resolution_scores():
    """store keeps the concatenation, the head's maps and the full-resolution
    log-probabilities; recompute only references to its input maps, the
    1/4-resolution logits and the labels."""
    store, recompute = _head_pair()
    f, labels = _head_inputs(), _labels(2, 32, 64, classes=5)
    shapes = set()
    _, saved_s = _saved_bytes(lambda: store.loss(f, labels, ignore_index=255))
    _, saved_r = _saved_bytes(lambda: recompute.loss(f, labels, ignore_index=255), shapes)
    assert shapes <= {tuple(x.shape) for x in f} | {(2, 5, 8, 16), (2, 32, 64), ()}
    full_scores = 2 * 5 * 32 * 64 * 8
    assert sum(saved_s.values()) > full_scores + sum(saved_r.values())


def test_stem_store_and_recompute_agree():
    torch.manual_seed(0)
    store = Stem(6).double()
    recompute = set_memory_mode(copy.deepcopy(store), "recompute")
    grad = torch.randn(2, 6, 8, 16, dtype=torch.float64)

    def inputs():
        return [torch.randn(2, 3, 32, 64, generator=torch.Generator().manual_seed(2),
                            dtype=torch.float64).requires_grad_()]
    _compare(store, recompute, lambda m, x: (m(x) * grad).sum(), inputs)
    assert list(store.state_dict()) == list(recompute.state_dict()) == list(Stem(6).state_dict())


def test_stem_that_keeps_its_half_map_store_and_recompute_agree():
    """``keep_half``: (the first conv's map, the stem's output), the second
    exactly what the plain stem returns, under both memory modes."""
    torch.manual_seed(0)
    store = Stem(6, keep_half=True).double()
    recompute = set_memory_mode(copy.deepcopy(store), "recompute")
    g_half, g_out = torch.randn(2, 6, 16, 32, dtype=torch.float64), torch.randn(2, 6, 8, 16, dtype=torch.float64)

    def inputs():
        return [torch.randn(2, 3, 32, 64, generator=torch.Generator().manual_seed(2),
                            dtype=torch.float64).requires_grad_()]

    def run(m, x):
        half, out = m(x)
        return (half * g_half).sum() + (out * g_out).sum()
    _compare(store, recompute, run, inputs)
    plain = Stem(6).double().eval()
    plain.load_state_dict(store.state_dict())
    store.eval()
    x = inputs()[0].detach()
    with torch.no_grad():
        half, out = store(x)
        torch.testing.assert_close(half, plain[0](x), rtol=0, atol=0)
        torch.testing.assert_close(out, plain(x), rtol=0, atol=0)


def _trellis_pair(layers=3):
    cell = Genotype(normal=(("sep_conv_3x3", 0, 1), ("max_pool_3x3", 0, 2), ("skip_connect", 1, 2),
                            ("dil_conv_3x3", 1, 3), ("avg_pool_3x3", 2, 3), ("sep_conv_5x5", 0, 4),
                            ("skip_connect", 3, 4)), normal_concat=(1, 2, 3, 4))
    nodes = trellis_nodes(layers, 3)
    sources = [layer_nodes(nodes, layer - 1) for layer, _ in nodes]
    torch.manual_seed(0)
    store = TrellisBackbone(4, nodes, sources,
                            lambda c: RSPBlock(c, lambda ci: DerivedCell(ci, cell, affine=False)),
                            affine=False).double()
    recompute = copy.deepcopy(store)
    recompute.memory = "recompute"
    betas = [torch.randn(len(s), generator=torch.Generator().manual_seed(i), dtype=torch.float64)
             for i, s in enumerate(sources)]
    return store, recompute, betas, len(layer_nodes(nodes, layers))


def test_trellis_store_and_recompute_agree():
    store, recompute, betas, outputs = _trellis_pair()
    grads = [torch.randn(2, 4 << s, 8 >> s, 16 >> s, generator=torch.Generator().manual_seed(9),
                         dtype=torch.float64) for s in range(outputs)]

    def inputs():
        x = torch.randn(2, 4, 8, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        return [x.requires_grad_()] + [b.clone().requires_grad_() for b in betas]

    def run(model, stem, *logits):
        return sum((f * g).sum() for f, g in zip(model(stem, logits), grads))
    _compare(store, recompute, run, inputs)


def test_recompute_trellis_keeps_only_node_outputs():
    """recompute keeps nothing but the nodes' inputs (the stem, the previous
    layer's outputs and β), which are alive anyway."""
    store, recompute, betas, _ = _trellis_pair(layers=4)
    x = torch.randn(2, 4, 8, 16, dtype=torch.float64, requires_grad=True)
    shapes = set()
    _, saved_s = _saved_bytes(lambda: store(x, betas))
    _, saved_r = _saved_bytes(lambda: recompute(x, betas), shapes)
    node_outputs = {(2, 4 << s, 8 >> s, 16 >> s) for s in range(3)}
    assert shapes <= node_outputs | {tuple(b.shape) for b in betas}
    nodes = len(trellis_nodes(4, 3))
    assert sum(saved_r.values()) <= x.numel() * 8 * (nodes + 1) + sum(b.numel() * 8 for b in betas)
    assert sum(saved_s.values()) > 5 * sum(saved_r.values())


def test_set_memory_mode_reaches_every_recomputable_module():
    def make_cell(c):
        return Cell(c, memory="store")
    model = torch.nn.Sequential(Stem(4), RSPBlock(4, make_cell), Head([4], 3, 4))
    kinds = {type(m) for m in model.modules() if isinstance(m, Recomputable)}
    assert kinds == {Stem, MixedOp, Head}
    set_memory_mode(model, "recompute")
    assert {m.memory for m in model.modules() if isinstance(m, Recomputable)} == {"recompute"}
    with pytest.raises(ValueError, match="memory"):
        Head([4], 3, 4, memory="cheap")
    with pytest.raises(ValueError, match="memory"):
        Stem(4, memory="cheap")
