import copy

import pytest
import torch

from rspnet.data import get_dataset
from rspnet.nn import Cell, MixedOp, set_memory_mode, trellis_nodes
from rspnet.architecture import KeptNode
from rspnet.search import MacroSupernet, SinglePathSupernet, derive_cell


def _batch(n=2, h=32, w=64, classes=5):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, classes, (n, h, w), generator=g)
    y[:, :2] = 255
    return torch.randn(n, 3, h, w, generator=g), y


def test_stage1_shapes_and_parameter_split():
    model = SinglePathSupernet(5, channels=4, head_channels=8, edge_normalization=True)
    x, _ = _batch()
    assert model(x).shape == (2, 5, 32, 64)
    arch, weights = model.arch_parameters(), model.weight_parameters()
    assert [p.shape for p in arch] == [(10, 8), (10,)]
    assert {id(p) for p in arch}.isdisjoint(id(p) for p in weights)
    assert len(arch) + len(weights) == len(list(model.parameters()))
    assert len([m for m in model.modules() if isinstance(m, Cell)]) == 4
    assert len(model.genotype().normal) == 7
    assert 0 < model.entropy()["alpha"] <= torch.log(torch.tensor(8.0)).item() + 1e-6


def test_stage1_store_and_recompute_agree_end_to_end():
    torch.manual_seed(0)
    store = SinglePathSupernet(5, channels=4, head_channels=8, memory="store").double()
    recompute = set_memory_mode(copy.deepcopy(store), "recompute")
    x, y = _batch()
    results = []
    for model in (store, recompute):
        loss = model.loss(x.double(), y)
        results.append((loss, torch.autograd.grad(loss, list(model.parameters()))))
    (l_s, g_s), (l_r, g_r) = results
    torch.testing.assert_close(l_r, l_s, rtol=1e-12, atol=0)
    for (name, _), a, b in zip(store.named_parameters(), g_r, g_s):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)
    for (name, a), b in zip(store.named_buffers(), recompute.buffers()):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-14, msg=name)


def test_stage1_expected_params_counts_every_cell():
    model = SinglePathSupernet(5, channels=4, head_channels=8)
    w = torch.softmax(model.alphas, -1)
    expected = 0
    for cell in [m for m in model.modules() if isinstance(m, Cell)]:
        for e, edge in enumerate(cell.edges):
            expected = expected + sum(w[e, k] * sum(p.numel() for p in op.parameters())
                                      for k, op in enumerate(edge.ops))
    torch.testing.assert_close(model.expected_params(), expected)
    assert all(isinstance(m, MixedOp) for c in model.modules() if isinstance(c, Cell) for m in c.edges)


def test_stage2_shapes_paths_and_derivation():
    cell = derive_cell(torch.randn(10, 8))
    model = MacroSupernet(5, cell, channels=4, layers=3, head_channels=8)
    x, y = _batch()
    assert model(x).shape == (2, 5, 32, 64)
    assert model.nodes == trellis_nodes(3, 4)
    assert [b.numel() for b in model.betas] == [1, 1, 2, 2, 2, 3, 3, 3, 3]
    assert model.arch_parameters() == list(model.betas)
    loss = model.loss(x, y)
    grads = torch.autograd.grad(loss, model.arch_parameters())
    assert all(torch.isfinite(g).all() for g in grads)
    kept = model.paths()
    assert all(isinstance(n, KeptNode) for n in kept)
    assert {n.node for n in kept if n.node[0] == 3} == {(3, 0), (3, 1), (3, 2), (3, 3)}
    bn = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bn and not any(m.affine for m in bn)  # search BN: no affine parameters


def test_fp32_recompute_is_as_accurate_as_store():
    """Flat image regions give flat maps after the stem's ReLU, and max-pool
    windows full of equal values there: the recompute forward must round equal
    inputs equally (as ``store`` does), or the ties break differently and
    whole gradient entries move. The rule: recompute's fp32 error against fp64
    is no larger than a small multiple of store's own fp32 error."""
    data = get_dataset("synthetic", "train", size=(32, 64), length=2)
    x = torch.stack([data[i][0] for i in range(2)])
    y = torch.stack([data[i][1] for i in range(2)])
    torch.manual_seed(0)
    model = SinglePathSupernet(19, channels=16, head_channels=32)

    def grads(memory, dtype):
        m = set_memory_mode(copy.deepcopy(model), memory).to(dtype)
        return [g.double() for g in torch.autograd.grad(m.loss(x.to(dtype), y), list(m.parameters()))]

    reference = grads("store", torch.float64)

    def worst(memory):
        return max(((g - r).norm() / r.norm()).item()
                   for g, r in zip(grads(memory, torch.float32), reference) if r.norm() > 0)
    # measured: store 7.0e-5, recompute 7.0e-5 (3.3e-4 when ties break differently)
    assert worst("recompute") <= 2 * worst("store")


def _bn_counts(model):
    return {int(m.num_batches_tracked) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}


def _agree_end_to_end(store, recompute, dtype=torch.float64):
    """One architecture gradient (α/β only, as ``Architect``) and one weight
    backward (``backward(inputs=weights)``, as the search loop) per model:
    losses, every gradient and every buffer agree, and each BatchNorm counted
    exactly the two batches."""
    x, y = _batch()
    x = x.to(dtype)
    results = []
    for model in (store, recompute):
        arch_loss = model.loss(x, y)
        g_arch = torch.autograd.grad(arch_loss, model.arch_parameters())
        weights = model.weight_parameters()
        loss = model.loss(x.flip(-1), y.flip(-1))
        loss.backward(inputs=weights)
        results.append(([arch_loss, loss], list(g_arch) + [w.grad for w in weights]))
    (l_s, g_s), (l_r, g_r) = results
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else {}
    for a, b in zip(l_r, l_s):
        torch.testing.assert_close(a, b, **tol)
    names = ["arch"] * len(store.arch_parameters()) + [n for n, p in store.named_parameters()
                                                      if all(p is not a for a in store.arch_parameters())]
    assert len(g_r) == len(g_s) == len(names)
    for name, a, b in zip(names, g_r, g_s):
        torch.testing.assert_close(a, b, **tol, msg=name)
    for (name, a), b in zip(store.named_buffers(), recompute.buffers()):
        torch.testing.assert_close(b, a, **tol, msg=name)
    assert _bn_counts(store) == _bn_counts(recompute) == {2}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_stage1_store_and_recompute_agree_through_a_search_step(dtype):
    torch.manual_seed(0)
    store = SinglePathSupernet(5, channels=4, head_channels=8, memory="store",
                               edge_partial=2, edge_normalization=True).to(dtype)
    recompute = set_memory_mode(copy.deepcopy(store), "recompute")
    assert recompute.head.memory == recompute.stem.memory == "recompute"
    _agree_end_to_end(store, recompute, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_stage2_store_and_recompute_agree_through_a_search_step(dtype):
    cell = derive_cell(torch.randn(10, 8, generator=torch.Generator().manual_seed(3)))
    torch.manual_seed(0)
    store = MacroSupernet(5, cell, channels=4, layers=3, head_channels=8).to(dtype)
    torch.manual_seed(0)
    recompute = MacroSupernet(5, cell, channels=4, layers=3, head_channels=8, memory="recompute").to(dtype)
    assert store.backbone.memory == "store" and recompute.backbone.memory == "recompute"
    recompute.load_state_dict(store.state_dict())
    _agree_end_to_end(store, recompute, dtype)


def _peak_bytes(fn):
    """Peak of live tensor bytes during ``fn()`` (the profiler's allocation events)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    live = peak = 0
    for e in sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns()):
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def test_stage1_recompute_step_peak_is_under_a_quarter_of_store():
    """The issue's requirement, at the search's default sizes (batch 4,
    64×128, F=16, 19 classes): the live-tensor peak of a forward + backward
    (weights and α) in recompute is at most 25 % of store's (measured: 10 %;
    ``benchmarks/search_memory.py`` measures whole search steps and peak RSS)."""
    data = get_dataset("synthetic", "train", size=(64, 128), length=4)
    x = torch.stack([data[i][0] for i in range(4)])
    y = torch.stack([data[i][1] for i in range(4)])
    torch.manual_seed(0)
    model = SinglePathSupernet(19, channels=16, head_channels=64, memory="store")
    peaks = {}
    for memory in ("store", "recompute"):
        set_memory_mode(model, memory)

        def step():
            model.zero_grad(set_to_none=True)
            model.loss(x, y).backward()
        step()
        peaks[memory] = _peak_bytes(step)
    assert peaks["recompute"] <= 0.25 * peaks["store"], peaks
