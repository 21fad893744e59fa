import copy

import pytest
import torch

from rspnet.nn import Cell, DerivedCell, Genotype, edge_list, edge_normalization, set_memory_mode


def test_edge_list_order():
    assert edge_list(4) == [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3),
                            (0, 4), (1, 4), (2, 4), (3, 4)]


def test_edge_normalization_is_a_softmax_per_node():
    logits = torch.randn(10, dtype=torch.float64)
    w = edge_normalization(logits, 4)
    for lo, hi in [(0, 1), (1, 3), (3, 6), (6, 10)]:
        torch.testing.assert_close(w[lo:hi], torch.softmax(logits[lo:hi], 0))


def test_search_cell_matches_a_hand_written_cell():
    torch.manual_seed(0)
    cell = Cell(4, steps=3).double()
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    weights = torch.softmax(torch.randn(6, 8, dtype=torch.float64), -1)
    e = cell.edges
    n1 = e[0](x, weights[0])
    n2 = e[1](x, weights[1]) + e[2](n1, weights[2])
    n3 = e[3](x, weights[3]) + e[4](n1, weights[4]) + e[5](n2, weights[5])
    expected = cell.project(torch.cat([n1, n2, n3], 1))
    torch.testing.assert_close(cell(x, weights), expected, rtol=0, atol=1e-14)
    assert len(cell.edges) == 6 and cell(x, weights).shape == x.shape


@pytest.mark.parametrize("partial, normalise", [(1, False), (2, True)])
def test_cell_store_and_recompute_agree(partial, normalise):
    torch.manual_seed(0)
    store = Cell(4, memory="store", edge_partial=partial).double()
    recompute = set_memory_mode(copy.deepcopy(store), "recompute")
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    alpha = torch.randn(10, 8, dtype=torch.float64)
    edge_logits = torch.randn(10, dtype=torch.float64)
    grad_out = torch.randn_like(x)
    results = []
    for cell in (store, recompute):
        a = alpha.clone().requires_grad_()
        b = edge_logits.clone().requires_grad_()
        xi = x.clone().requires_grad_()
        y = cell(xi, torch.softmax(a, -1), edge_normalization(b, 4) if normalise else None)
        inputs = [xi, a] + ([b] if normalise else []) + list(cell.parameters())
        results.append((y, torch.autograd.grad(y, inputs, grad_out)))
    (y_s, g_s), (y_r, g_r) = results
    torch.testing.assert_close(y_r, y_s, rtol=1e-10, atol=1e-12)
    for a, b in zip(g_r, g_s):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for a, b in zip(recompute.buffers(), store.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


GENOTYPE = Genotype(normal=(("sep_conv_3x3", 0, 1), ("skip_connect", 0, 2), ("max_pool_3x3", 1, 2),
                            ("dil_conv_3x3", 2, 3), ("avg_pool_3x3", 0, 3)),
                    normal_concat=(1, 2, 3))


def test_derived_cell_matches_a_hand_written_cell():
    torch.manual_seed(0)
    cell = DerivedCell(4, GENOTYPE).double()
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    sep, skip, pool, dil, avg = cell.ops
    n1 = sep(x)
    n2 = skip(x) + pool(n1)
    n3 = dil(n2) + avg(x)
    expected = cell.project(torch.cat([n1, n2, n3], 1))
    torch.testing.assert_close(cell(x), expected, rtol=0, atol=1e-14)
    assert all(m.affine for m in cell.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_derived_cell_rejects_a_node_without_input():
    broken = Genotype(normal=(("sep_conv_3x3", 0, 1), ("skip_connect", 0, 3)), normal_concat=(1, 3))
    with pytest.raises(ValueError, match="incoming edge"):
        DerivedCell(4, broken)
