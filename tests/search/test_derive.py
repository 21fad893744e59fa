import math

import torch

from rspnet.nn import trellis_nodes, layer_nodes
from rspnet.architecture import format_cell, reaching_head
from rspnet.search import derive_cell, derive_paths

# PRIMITIVES indices: 0 none, 1 max_pool, 2 avg_pool, 3 skip, 4 sep3, 5 sep5, 6 dil3, 7 dil5
# edges: 0:(0,1) 1:(0,2) 2:(1,2) 3:(0,3) 4:(1,3) 5:(2,3) 6:(0,4) 7:(1,4) 8:(2,4) 9:(3,4)


def _alphas():
    a = torch.zeros(10, 8)
    a[0, 5] = 2.0                          # node 1: its only edge
    a[1, 0], a[1, 3] = 5.0, 1.0            # 'none' dominates but is never chosen as the op
    a[2, 6] = 1.5
    a[3, 4] = 1.0                          # strength e/(e+7)       = 0.280
    a[4, 0], a[4, 1] = 6.0, 0.5            # 'none'-dominant edge: its best real op is weak
    a[5, 7] = 0.8                          # strength e^.8/(e^.8+7) = 0.241
    a[6, 2] = a[6, 4] = 1.0                # op tie avg_pool / sep_conv_3x3 -> avg_pool (earlier)
    a[7] = a[6]                            # strength tie between sources 0, 1 and 2 -> 0 and 1
    a[8] = a[6]
    a[9, 3] = 0.2
    return a


def test_darts_rule_with_ties_and_none_dominant_edges():
    g = derive_cell(_alphas())
    assert g.normal == (("sep_conv_5x5", 0, 1), ("skip_connect", 0, 2), ("dil_conv_3x3", 1, 2),
                        ("sep_conv_3x3", 0, 3), ("dil_conv_5x5", 2, 3),
                        ("avg_pool_3x3", 0, 4), ("avg_pool_3x3", 1, 4))
    assert g.normal_concat == (1, 2, 3, 4)
    assert format_cell(g).startswith("1=sep_conv_5x5(0) 2=skip_connect(0)+dil_conv_3x3(1)")


def test_all_none_edges_still_give_a_real_op():
    a = torch.zeros(10, 8)
    a[:, 0] = 10.0
    g = derive_cell(a)
    assert all(op == "max_pool_3x3" for op, _, _ in g.normal)  # first non-none on a full tie
    assert [(s, t) for _, s, t in g.normal] == [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (0, 4), (1, 4)]


def test_edge_normalization_reranks_edges():
    logits = torch.zeros(10)
    logits[5] = -10.0                      # node 3's edge from node 2 all but switched off
    g = derive_cell(_alphas(), edge_logits=logits)
    assert ("max_pool_3x3", 1, 3) in g.normal and ("dil_conv_5x5", 2, 3) not in g.normal


def _skip_heavy():
    """Skip wins every edge; the runner-up of each edge is set by hand."""
    a = torch.zeros(10, 8)
    a[:, 3] = torch.tensor([3.0, 2.0, 2.5, 1.0, 3.0, 2.0, 1.5, 2.2, 2.0, 2.6])
    a[:, 4] = 0.5                                       # sep_conv_3x3 runner-up everywhere...
    a[1, 6] = a[6, 7] = 1.2                             # ...but dil_conv_3x3 on (0,2), dil_conv_5x5 on (0,4)
    return a


def test_max_skip_replaces_the_weakest_skips_in_turn():
    cell = derive_cell(_skip_heavy())
    assert format_cell(cell) == ("1=skip_connect(0) 2=skip_connect(0)+skip_connect(1) "
                                 "3=skip_connect(1)+skip_connect(2) 4=skip_connect(1)+skip_connect(3)")
    # 7 skips; max_skip=5 removes two, re-deriving after each:
    # 1. the weakest kept skips are (0,2) and (2,3), logit 2.0: the earlier edge, (0,2), loses its
    #    skip weight and takes its runner-up dil_conv_3x3 (node 2 has only two edges, both kept);
    # 2. (2,3) loses its skip: its best op is now sep_conv_3x3 (logit 0.5 in a row whose softmax
    #    is spread by skip's 2.0), weaker than (0,3)'s skip (logit 1.0), so node 3 keeps (0,3)
    #    with skip -- still 6 skips;
    # 3. (0,3)'s skip (1.0) is now the weakest: it goes, and (0,3) keeps its place with
    #    sep_conv_3x3, whose probability in row (0,3) beats the one in row (2,3).
    limited = derive_cell(_skip_heavy(), max_skip=5)
    assert format_cell(limited) == ("1=skip_connect(0) 2=dil_conv_3x3(0)+skip_connect(1) "
                                    "3=sep_conv_3x3(0)+skip_connect(1) 4=skip_connect(1)+skip_connect(3)")
    for m in range(8):
        ops = [op for op, _, _ in derive_cell(_skip_heavy(), max_skip=m).normal]
        assert ops.count("skip_connect") == min(m, 7)
        assert "none" not in ops
    assert derive_cell(_skip_heavy(), max_skip=7) == cell
    # ops without a skip_connect candidate: the limit has nothing to do
    light = ("none", "sep_conv_3x3", "sep_conv_5x5")
    assert derive_cell(_skip_heavy()[:, [0, 4, 5]], primitives=light, max_skip=0) == \
        derive_cell(_skip_heavy()[:, [0, 4, 5]], primitives=light)


NODES = trellis_nodes(3, 4)
SOURCES = [layer_nodes(NODES, layer - 1) for layer, _ in NODES]


def _betas(values):
    by_node = dict(zip(NODES, values))
    return [torch.tensor(by_node[n], dtype=torch.float32) for n in NODES]


def test_macro_rule_top2_renormalised_and_pruned():
    betas = _betas([[0.0], [0.0],
                    [1.0, 0.0], [0.0, 2.0], [0.0, 0.0],
                    [1.0, 0.5, -1.0], [0.0, 0.0, 0.0], [2.0, 2.0, -5.0], [0.3, 0.2, 0.1]])
    kept = {n.node: n.paths for n in derive_paths(betas, NODES, SOURCES, top_k=2)}
    assert (2, 2) not in kept                           # no layer-3 node keeps it
    assert set(kept) == set(NODES) - {(2, 2)}
    sig = 1 / (1 + math.exp(-0.5))                       # softmax([1, .5]) renormalised over the two
    ((s0, w0), (s1, w1)) = kept[(3, 0)]
    assert (s0, s1) == ((2, 0), (2, 1))
    assert math.isclose(w0, sig, rel_tol=1e-15) and math.isclose(w1, 1 - sig, rel_tol=1e-15)
    assert kept[(3, 1)] == (((2, 0), 0.5), ((2, 1), 0.5))  # three-way tie: lower scales win
    assert [s for s, _ in kept[(3, 3)]] == [(2, 0), (2, 1)]
    assert kept[(1, 0)] == (((0, 0), 1.0),)
    for paths in kept.values():
        assert math.isclose(sum(w for _, w in paths), 1.0, rel_tol=1e-15)


def test_macro_rule_top1_prunes_whole_branches():
    betas = _betas([[0.0], [0.0],
                    [-1.0, 1.0], [3.0, 0.0], [3.0, 0.0],
                    [2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [5.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    kept = {n.node: n.paths for n in derive_paths(betas, NODES, SOURCES, top_k=1)}
    # every layer-3 node reads (2, 0); (2, 0) reads (1, 1); so (1, 0), (2, 1), (2, 2) are pruned
    assert sorted(kept) == [(1, 1), (2, 0), (3, 0), (3, 1), (3, 2), (3, 3)]
    assert kept[(2, 0)] == (((1, 1), 1.0),)


def test_same_scale_rule_keeps_each_nodes_own_scale():
    """--same-scale-paths: (l, s) keeps (l-1, s) however weak, plus the best
    other; a node without its own scale below keeps its top_k as usual."""
    betas = _betas([[0.0], [0.0],
                    [-4.0, 1.0], [3.0, -5.0], [0.0, 2.0],
                    [-9.0, 1.0, 2.0], [1.0, -9.0, 0.5], [2.0, 1.0, -9.0], [0.3, 0.2, 0.1]])
    kept = {n.node: [s for s, _ in n.paths] for n in derive_paths(betas, NODES, SOURCES, 2, same_scale=True)}
    plain = {n.node: [s for s, _ in n.paths] for n in derive_paths(betas, NODES, SOURCES, 2)}
    assert kept[(2, 0)] == [(1, 0), (1, 1)]                    # the only two
    assert kept[(3, 0)] == [(2, 0), (2, 2)] and plain[(3, 0)] == [(2, 1), (2, 2)]
    assert kept[(3, 1)] == [(2, 0), (2, 1)] and plain[(3, 1)] == [(2, 0), (2, 2)]
    assert kept[(3, 2)] == [(2, 0), (2, 2)] and plain[(3, 2)] == [(2, 0), (2, 1)]
    assert kept[(3, 3)] == plain[(3, 3)] == [(2, 0), (2, 1)]   # no (2, 3): top 2 by beta
    assert kept[(1, 1)] == [(0, 0)]
    # top_k = 1: only the own scale where there is one
    top1 = {n.node: [s for s, _ in n.paths] for n in derive_paths(betas, NODES, SOURCES, 1, same_scale=True)}
    assert top1[(3, 0)] == [(2, 0)] and top1[(3, 2)] == [(2, 2)]


def test_reaching_head_walks_back_from_the_last_layer():
    kept = {(1, 0): [(0, 0)], (1, 1): [(0, 0)], (2, 0): [(1, 0)], (2, 1): [(1, 1)], (3, 0): [(2, 0)]}
    assert reaching_head(kept) == {(3, 0), (2, 0), (1, 0)}
