"""The search's expected-cost term (``rspnet.search.cost``): its gradient
against finite differences, the table against the measured cost of derived
networks, the budget penalty, and the latency table's bookkeeping."""
import dataclasses
import random

import pytest
import torch

from rspnet.architecture import Architecture, edge_list
from rspnet.models import RSPNet, count_flops
from rspnet.nn import layer_nodes, trellis_nodes
from rspnet.search import derive_cell, derive_paths
from rspnet.search.cost import (CostGeometry, LatencyMeter, flops_table, kept_probabilities, latency_table,
                                time_ms)

D = torch.float64
GEOMETRY = CostGeometry(channels=8, scales=3, layers=4, steps=3, rsp_ratio=0.5, rsp_depth=1,
                        head_channels=16, num_classes=5, size=(32, 64))
NODES = trellis_nodes(GEOMETRY.layers, GEOMETRY.scales)
SOURCES = [layer_nodes(NODES, layer - 1) for layer, _ in NODES]
BIG = 40.0   # logit gap: softmax leaks e^-40 to the losers


def _hot_alpha(rng: random.Random) -> torch.Tensor:
    """One-hot α (up to e^-40) whose edges into a node agree on a non-none op."""
    alpha = torch.full((len(edge_list(GEOMETRY.steps)), 8), -BIG, dtype=D)
    e = 0
    for t in range(1, GEOMETRY.steps + 1):
        k = rng.randrange(1, 8)
        for _ in range(t):
            alpha[e, k] = 0.0
            e += 1
    return alpha


def _hot_betas(rng: random.Random, k: int = 2) -> list[torch.Tensor]:
    """β that keeps ``k`` paths of every node with equal probability."""
    betas = []
    for src in SOURCES:
        b = torch.full((len(src),), -BIG, dtype=D)
        for i in rng.sample(range(len(src)), min(k, len(src))):
            b[i] = 0.0
        betas.append(b)
    return betas


def test_kept_probabilities_sum_to_top_k_and_are_exact_when_hot():
    p = torch.tensor([0.9, 0.05, 0.03, 0.02], dtype=D)
    q = kept_probabilities(p, 2)
    torch.testing.assert_close(q.sum(), torch.tensor(2.0, dtype=D))
    assert q[0] == 1 and (q[1:] < 1).all()
    torch.testing.assert_close(kept_probabilities(torch.tensor([0.5, 0.5, 0.0], dtype=D), 2),
                               torch.tensor([1.0, 1.0, 0.0], dtype=D))
    torch.testing.assert_close(kept_probabilities(torch.tensor([0.3, 0.7], dtype=D), 2),
                               torch.ones(2, dtype=D))


@pytest.mark.parametrize("seed", range(6))
def test_expected_flops_of_hot_logits_is_the_derived_networks_count(seed):
    """One-hot α and two-hot β: the expectation is the derived network's
    FlopCounterMode count (pruned nodes included), to 1e-9."""
    rng = random.Random(seed)
    table = flops_table(GEOMETRY)
    alpha, betas = _hot_alpha(rng), _hot_betas(rng)
    arch = Architecture(cell=derive_cell(alpha, GEOMETRY.steps), channels=8, scales=3, head_channels=16,
                        layers=GEOMETRY.layers, nodes=derive_paths(betas, NODES, SOURCES, 2))
    measured = count_flops(RSPNet(arch, GEOMETRY.num_classes).eval(), GEOMETRY.size)
    assert table.architecture(arch) == measured
    torch.testing.assert_close(table.expected(torch.softmax(alpha, -1), betas).item(), float(measured),
                               rtol=1e-9, atol=0)
    torch.testing.assert_close(table.expected(arch.cell, betas).item(), float(measured), rtol=1e-9, atol=0)


@pytest.mark.parametrize("seed, widths, pool_first, head", [(0, None, False, "light"), (1, None, True, "light"),
                                                           (2, (8, 12, 20), True, "light"),
                                                           (3, None, True, "detail"), (4, (8, 12, 20), False, "detail")])
def test_expected_flops_with_the_light_head(seed, widths, pool_first, head):
    """The table of a ``light``- or ``detail``-head geometry (and of per-scale
    widths, and paths pooled before their projection) against its derived
    networks."""
    rng = random.Random(seed)
    geometry = dataclasses.replace(GEOMETRY, head=head, scale_channels=widths, pool_first=pool_first)
    table = flops_table(geometry)
    alpha, betas = _hot_alpha(rng), _hot_betas(rng)
    arch = Architecture(cell=derive_cell(alpha, GEOMETRY.steps), channels=8, scales=3, head_channels=16,
                        head=head, scale_channels=widths, pool_first=pool_first, layers=GEOMETRY.layers,
                        nodes=derive_paths(betas, NODES, SOURCES, 2))
    measured = count_flops(RSPNet(arch, GEOMETRY.num_classes).eval(), GEOMETRY.size)
    assert table.architecture(arch) == measured
    torch.testing.assert_close(table.expected(torch.softmax(alpha, -1), betas).item(), float(measured),
                               rtol=1e-9, atol=0)
    concat = dataclasses.replace(arch, head="concat")
    assert measured < flops_table(dataclasses.replace(geometry, head="concat")).architecture(concat)


def test_table_sums_the_single_path_network_too():
    arch = Architecture(cell=derive_cell(_hot_alpha(random.Random(3)), GEOMETRY.steps), channels=8, scales=3,
                        head_channels=16)
    assert flops_table(GEOMETRY).architecture(arch) == count_flops(RSPNet(arch, 5).eval(), GEOMETRY.size)


def test_gradient_against_finite_differences():
    """gradcheck in fp64: stage 1 (α, uniform β), stage 2 (β, fixed cell), both."""
    table = flops_table(GEOMETRY)
    g = torch.Generator().manual_seed(0)
    alpha = torch.randn(len(edge_list(GEOMETRY.steps)), 8, generator=g, dtype=D, requires_grad=True)
    betas = [torch.randn(len(src), generator=g, dtype=D, requires_grad=True) for src in SOURCES]
    cell = derive_cell(alpha, GEOMETRY.steps)
    scale = 1e-6   # FLOPs are ~1e6: keep the function O(1) for gradcheck's tolerances
    assert torch.autograd.gradcheck(lambda a: scale * table.expected(torch.softmax(a, -1)), (alpha,))
    assert torch.autograd.gradcheck(lambda *b: scale * table.expected(cell, list(b)), tuple(betas))
    assert torch.autograd.gradcheck(lambda a, *b: scale * table.expected(torch.softmax(a, -1), list(b)),
                                    (alpha, *betas))


def _hot_betas_with_own_scale(rng: random.Random) -> list[torch.Tensor]:
    """Two-hot β that includes each node's own scale where it has one."""
    betas = []
    for node, src in zip(NODES, SOURCES):
        b = torch.full((len(src),), -BIG, dtype=D)
        own = [i for i, s in enumerate(src) if s == (node[0] - 1, node[1])]
        others = [i for i in range(len(src)) if i not in own]
        for i in own + rng.sample(others, min(2, len(src)) - len(own)):
            b[i] = 0.0
        betas.append(b)
    return betas


@pytest.mark.parametrize("seed", range(3))
def test_same_scale_expectation_is_the_derived_count_and_differentiable(seed):
    """--same-scale-paths: the own-scale path is kept surely, the others
    water-filled for top_k - 1; exact for hot logits that agree with the rule,
    and smooth (gradcheck) elsewhere."""
    rng = random.Random(seed)
    geometry = dataclasses.replace(GEOMETRY, same_scale=True)
    table = flops_table(geometry)
    alpha, betas = _hot_alpha(rng), _hot_betas_with_own_scale(rng)
    arch = Architecture(cell=derive_cell(alpha, GEOMETRY.steps), channels=8, scales=3, head_channels=16,
                        layers=GEOMETRY.layers, nodes=derive_paths(betas, NODES, SOURCES, 2, same_scale=True))
    measured = count_flops(RSPNet(arch, GEOMETRY.num_classes).eval(), GEOMETRY.size)
    torch.testing.assert_close(table.expected(arch.cell, betas).item(), float(measured), rtol=1e-9, atol=0)
    g = torch.Generator().manual_seed(seed)
    soft = [torch.randn(len(src), generator=g, dtype=D, requires_grad=True) for src in SOURCES]
    assert torch.autograd.gradcheck(lambda *b: 1e-6 * table.expected(arch.cell, list(b)), tuple(soft))


def test_gradient_with_a_dominant_path():
    """The water-filling branch of kept_probabilities (one path above 1/top_k)."""
    table = flops_table(GEOMETRY)
    g = torch.Generator().manual_seed(1)
    betas = [torch.randn(len(src), generator=g, dtype=D) for src in SOURCES]
    for b in betas:
        if b.numel() > 2:
            b[0] = 3.0
    betas = [b.requires_grad_() for b in betas]
    cell = derive_cell(torch.randn(6, 8, generator=g), GEOMETRY.steps)
    assert torch.autograd.gradcheck(lambda *b: 1e-6 * table.expected(cell, list(b)), tuple(betas))


@pytest.mark.parametrize("fraction", [0.3, 0.6])
def test_budget_is_honoured_by_the_derived_network(fraction):
    """Only the penalty, minimised over α and β by Adam from near-uniform
    logits: the derived network's counted FLOPs end within the budget, set
    between the cheapest and the dearest network of the space; and the
    penalty is zero under the budget."""
    from rspnet.search import CostPenalty
    table = flops_table(GEOMETRY)
    torch.manual_seed(0)
    alpha = (1e-3 * torch.randn(len(edge_list(GEOMETRY.steps)), 8, dtype=D)).requires_grad_()
    betas = [(1e-3 * torch.randn(len(src), dtype=D)).requires_grad_() for src in SOURCES]
    start = table.expected(torch.softmax(alpha, -1), betas).item()
    cheapest = table.expected(torch.softmax(_hot_alpha_of("skip_connect"), -1), betas).item()
    budget = cheapest + fraction * (start - cheapest)

    class Model:
        def expected_cost(self, t):
            return t.expected(torch.softmax(alpha, -1), betas)

    penalty = CostPenalty(table, 1.0, budget)
    optimizer = torch.optim.Adam([alpha, *betas], lr=0.1)
    for _ in range(200):
        optimizer.zero_grad()
        loss = penalty(Model())
        if loss.item() == 0:
            break
        loss.backward()
        optimizer.step()
    assert penalty(Model()).item() == 0
    arch = Architecture(cell=derive_cell(alpha, GEOMETRY.steps), channels=8, scales=3, head_channels=16,
                        layers=GEOMETRY.layers, nodes=derive_paths(betas, NODES, SOURCES, 2))
    measured = count_flops(RSPNet(arch, GEOMETRY.num_classes).eval(), GEOMETRY.size)
    assert measured <= budget


def _hot_alpha_of(name: str) -> torch.Tensor:
    from rspnet.architecture import PRIMITIVES
    alpha = torch.full((len(edge_list(GEOMETRY.steps)), 8), -BIG, dtype=D)
    alpha[:, PRIMITIVES.index(name)] = 0.0
    return alpha


class _Timer:
    """A deterministic stand-in for the clock: a piece's 'latency' is its
    input's element count / 1000, and every call is recorded."""

    def __init__(self):
        self.calls = 0

    def __call__(self, fn, inputs):
        self.calls += 1
        return sum(x.numel() for x in inputs) / 1000


def test_latency_table_bookkeeping(tmp_path):
    """Every piece is timed once, written to the file under a key naming the
    device, torch and the shapes, and read back instead of timed again; the
    calibration (whole networks timed) is cached with them, and scales
    every entry by the median of network time / table sum."""
    import statistics

    from rspnet.search.cost import CALIBRATION_NETS, calibration_architectures
    path = tmp_path / "latency.json"
    timer = _Timer()
    table = latency_table(GEOMETRY, "cpu", path, timer=timer)
    assert timer.calls == len(table.entries) + CALIBRATION_NETS and path.exists()
    raw = latency_table(GEOMETRY, "cpu", path, timer=timer, calibrate=0)
    assert timer.calls == len(table.entries) + CALIBRATION_NETS   # nothing timed twice
    assert raw["stem"] == 3 * 32 * 64 / 1000 and raw.calibration == 1.0
    assert raw["op:1:sep_conv_3x3"] == 2 * 8 * 16 / 1000   # inner channels 8 at 1/8 of 32x64
    # the fake clock gives a whole network its image's size / 1000
    archs = calibration_architectures(GEOMETRY)
    assert len(archs) == CALIBRATION_NETS and len({a.fingerprint() for a in archs}) == CALIBRATION_NETS
    expected = statistics.median(3 * 32 * 64 / 1000 / raw.architecture(a) for a in archs)
    assert table.calibration == pytest.approx(expected, rel=1e-12)
    assert all(table[k] == pytest.approx(v * expected, rel=1e-12) for k, v in raw.entries.items())
    meter = LatencyMeter(path, torch.device("cpu"), timer)
    assert all(f"torch {torch.__version__}" in key and key.startswith("cpu:") for key in meter.entries)
    assert sum("|calibration|" in key for key in meter.entries) == 1
    again = latency_table(GEOMETRY, "cpu", path, timer=timer)
    assert timer.calls == len(table.entries) + CALIBRATION_NETS
    assert again.entries == table.entries and again.calibration == table.calibration
    other = CostGeometry(**{**GEOMETRY.__dict__, "size": (64, 64)})
    latency_table(other, "cpu", path, timer=timer)
    assert timer.calls > len(table.entries) + CALIBRATION_NETS   # other shapes: timed anew


def test_latency_pieces_are_timed_in_their_inference_form(tmp_path):
    """What the table times is what the deployed network runs: no BatchNorm
    left, 3×3 poolings separable, the stem and head channels-last; each
    prepared piece computes what the eval-mode piece does."""
    import torch.nn as nn

    from rspnet.models.simplify import AvgPool3x3, MaxPool3x3
    from rspnet.search.cost import CostTable, _pieces, inference_piece
    timed = {}

    def measure(module, inputs):
        timed[len(timed)] = module
        return 1.0

    CostTable.build(GEOMETRY, measure, unit="ms", prepare=inference_piece)
    pieces = _pieces(GEOMETRY, [(0, 1, 2)])
    assert len(timed) == len(pieces)
    kinds = [type(m).__name__ for m in timed.values()]
    assert kinds[0] == "ChannelsLast" and kinds[1] == "_HeadAt"
    assert not any(isinstance(x, nn.BatchNorm2d) for m in timed.values() for x in m.modules())
    assert not any(isinstance(x, (nn.MaxPool2d, nn.AvgPool2d)) for m in timed.values() for x in m.modules())
    assert any(isinstance(m, MaxPool3x3) for m in timed.values())
    assert any(isinstance(m, AvgPool3x3) for m in timed.values())
    torch.manual_seed(0)
    with torch.no_grad():
        for key, module, shapes in pieces:
            for bn in (m for m in module.modules() if isinstance(m, nn.BatchNorm2d)):
                bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2.0)
            module.eval()
            inputs = [torch.randn(shape) for shape in shapes]
            want, got = module(*inputs), inference_piece(module)(*inputs)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=key)


def test_latency_table_is_close_to_a_direct_measurement():
    """Real timing, loose: a table entry is the median of a few runs; a
    fresh median of the same piece (in its inference form) lies within a
    factor of 3 of it (shared CPUs), and the calibrated table's sum for a
    network not among the calibration ones within a factor of 2 of the
    network's inference form timed whole."""
    from rspnet.models import inference_form
    from rspnet.nn import Stem
    from rspnet.search.cost import calibration_architectures, inference_piece
    geometry = CostGeometry(**{**GEOMETRY.__dict__, "size": (64, 128)})
    table = latency_table(geometry, "cpu", None)
    stem = inference_piece(Stem(8))
    previous = torch.get_num_threads()
    torch.set_num_threads(1)   # as the table was timed
    try:
        with torch.no_grad():
            direct = time_ms(stem, [torch.randn(1, 3, 64, 128)], repeats=9)
            arch = calibration_architectures(geometry, 1, seed=7)[0]
            net = inference_form(RSPNet(arch, geometry.num_classes))
            whole = time_ms(net, [torch.randn(1, 3, 64, 128)], repeats=9)
    finally:
        torch.set_num_threads(previous)
    assert direct / 3 < table["stem"] / table.calibration < direct * 3
    assert whole / 2 < table.architecture(arch) < whole * 2


def test_time_ms_is_the_median_after_the_warmup(monkeypatch):
    """The latency table's timer on a fake clock: ``fn(*inputs)`` called
    warmup + repeats times, the median of the timed calls in ms; the table's
    key names the device as ``rspnet.ops.timing`` does."""
    from rspnet.ops import timing
    from rspnet.search import cost

    now, costs, calls = [0.0], [100.0, 100.0, 4.0, 1.0, 3.0], []
    monkeypatch.setattr(timing, "perf_counter", lambda: now[0])

    def fn(*inputs):
        calls.append(inputs)
        now[0] += costs[len(calls) - 1] / 1000

    x = torch.zeros(1)
    assert time_ms(fn, [x, x], repeats=3, warmup=2) == pytest.approx(3.0)
    assert len(calls) == 5 and all(c == (x, x) for c in calls)
    assert cost.device_name is timing.device_name


def test_penalty_is_the_relative_excess_only():
    from rspnet.search import CostPenalty
    table = flops_table(GEOMETRY)
    alpha = torch.zeros(len(edge_list(GEOMETRY.steps)), 8, dtype=D)

    class Model:
        def expected_cost(self, t):
            return t.expected(torch.softmax(alpha, -1))

    e = table.expected(torch.softmax(alpha, -1)).item()
    assert CostPenalty(table, 2.0, e * 1.01)(Model()).item() == 0
    torch.testing.assert_close(CostPenalty(table, 2.0, e / 2)(Model()).item(), 2.0 * (e - e / 2) / (e / 2))


def test_light_candidates_in_the_table_and_the_derived_network():
    """The light set's inverted residuals: the table's expectation for hot α
    is still the derived network's count, and the architecture file
    round-trips them."""
    from rspnet.architecture import LIGHT_PRIMITIVES
    geometry = CostGeometry(**{**GEOMETRY.__dict__, "primitives": LIGHT_PRIMITIVES})
    table = flops_table(geometry)
    rng = random.Random(7)
    alpha = torch.full((len(edge_list(GEOMETRY.steps)), len(LIGHT_PRIMITIVES)), -BIG, dtype=D)
    e = 0
    for t in range(1, GEOMETRY.steps + 1):
        k = rng.randrange(2, len(LIGHT_PRIMITIVES))
        alpha[e:e + t, k] = 0.0
        e += t
    betas = _hot_betas(rng)
    cell = derive_cell(alpha, GEOMETRY.steps, primitives=LIGHT_PRIMITIVES)
    assert all(op.startswith("mbconv") for op, _, _ in cell.normal)
    arch = Architecture(cell=cell, channels=8, scales=3, head_channels=16, layers=GEOMETRY.layers,
                        nodes=derive_paths(betas, NODES, SOURCES, 2))
    arch = Architecture.load(arch.to_dict())
    measured = count_flops(RSPNet(arch, GEOMETRY.num_classes).eval(), GEOMETRY.size)
    torch.testing.assert_close(table.expected(torch.softmax(alpha, -1), betas).item(), float(measured),
                               rtol=1e-9, atol=0)
