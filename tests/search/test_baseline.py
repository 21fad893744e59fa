"""The random baseline (``--random``) and the search fixes that came with it:
H(β) over the nodes that choose, and the two defects that only showed on a
GPU, run here on the ``meta`` device and the CPU."""
import json
import math

import pytest
import torch

from rspnet.architecture import PRIMITIVES, Architecture, reaching_head
from rspnet.models import RSPNet, count_params
from rspnet.nn import layer_nodes, trellis_nodes
from rspnet.search import Architect, MacroSupernet, SearchConfig, SinglePathSupernet, derive_cell
from rspnet.search.__main__ import main
from rspnet.search.baseline import random_architecture, sample_architectures

CONFIG = SearchConfig(channels=4, layers=4)


def test_random_architectures_follow_the_derivation_rules():
    import random
    rng = random.Random(0)
    for _ in range(50):
        arch = random_architecture(CONFIG, rng)
        incoming = {}
        for op, source, target in arch.cell.normal:
            assert op in PRIMITIVES and op != "none" and 0 <= source < target
            incoming.setdefault(target, []).append(source)
        assert {t: len(set(s)) for t, s in incoming.items()} == {t: min(2, t) for t in range(1, 5)}
        nodes = trellis_nodes(CONFIG.layers, CONFIG.scales)
        for kept in arch.nodes:
            sources = layer_nodes(nodes, kept.node[0] - 1)
            assert len(kept.paths) == min(CONFIG.top_k, len(sources))
            assert all(s in sources for s, _ in kept.paths)
            assert math.isclose(sum(w for _, w in kept.paths), 1.0)
        kept = {n.node: [s for s, _ in n.paths] for n in arch.nodes}
        assert reaching_head(kept) == set(kept)         # unreachable nodes are pruned
        assert Architecture.load(arch.to_dict()) == arch   # a valid architecture file


def test_random_same_scale_draws_keep_each_nodes_own_scale():
    import dataclasses
    import random
    config = dataclasses.replace(CONFIG, same_scale_paths=True)
    rng = random.Random(0)
    others = set()
    for _ in range(30):
        arch = random_architecture(config, rng)
        for kept in arch.nodes:
            layer, scale = kept.node
            sources = [s for s, _ in kept.paths]
            if layer > 1 and scale <= min(layer - 2, config.scales - 1):
                assert (layer - 1, scale) in sources and len(sources) == 2
                others.update(s for s in sources if s != (layer - 1, scale))
    assert len(others) > 5          # the second path is still drawn


def test_random_draws_are_seeded_spread_and_honour_a_budget():
    a = [arch for arch, _ in sample_architectures(CONFIG, 8, seed=3)]
    b = [arch for arch, _ in sample_architectures(CONFIG, 8, seed=3)]
    assert [x.to_dict() for x in a] == [x.to_dict() for x in b]
    assert len({json.dumps(x.structure(), sort_keys=True) for x in a}) == 8
    all_params = sorted(p for _, p in sample_architectures(CONFIG, 20, seed=4))
    budget = all_params[len(all_params) // 2]
    within = sample_architectures(CONFIG, 5, seed=5, max_params=budget)
    assert all(p <= budget and p == count_params(RSPNet(arch, 19)) for arch, p in within)
    with pytest.raises(ValueError, match="within"):
        sample_architectures(CONFIG, 2, seed=5, max_params=1, max_draws=20)


def test_random_draws_within_a_flops_budget_are_within_it():
    """``max_costs``: every architecture drawn costs at most the budget by its
    own counted FLOPs (the table sums to ``count_flops`` exactly), the draw is
    the unfiltered draw with the others left out, and an impossible budget
    fails fast, naming the flag and the cheapest network drawn."""
    from rspnet.models import count_flops
    from rspnet.search.stage import cost_geometry
    from rspnet.search.cost import flops_table
    size = (64, 64)
    table = flops_table(cost_geometry(CONFIG, 19, size))
    every = [arch for arch, _ in sample_architectures(CONFIG, 20, seed=6)]
    flops = [count_flops(RSPNet(a, 19).eval(), size) for a in every]
    budget = sorted(flops)[len(flops) // 2]
    within = [arch for arch, _ in sample_architectures(CONFIG, 6, seed=6, max_costs={"--flops-budget": (table, budget)})]
    assert all(count_flops(RSPNet(a, 19).eval(), size) <= budget for a in within)
    cheap = [a.to_dict() for a, f in zip(every, flops) if f <= budget]
    assert [a.to_dict() for a in within][:len(cheap)] == cheap[:len(within)]
    with pytest.raises(ValueError, match=r"--flops-budget 1e-09: only 0 of \d+ random architectures are within it \(the cheapest drawn: [\d.]+ GFLOPs"):
        sample_architectures(CONFIG, 2, seed=5, max_costs={"--flops-budget": (table, 1.0)}, max_draws=30)


def test_random_cli_within_budgets(tmp_path, capsys):
    from rspnet.models import count_flops
    flags = ["--random", "3", "--channels", "4", "--layers", "3", "--seed", "7", "--size", "64x64"]
    assert main(flags + ["--out", str(tmp_path / "all")]) == 0
    every = [count_flops(RSPNet(f, 19).eval(), (64, 64)) for f in sorted((tmp_path / "all").glob("*.json"))]
    budget = sorted(every)[1]
    out = tmp_path / "random"
    assert main(flags + ["--flops-budget", repr(budget / 1e9), "--within-budgets", "--out", str(out)]) == 0
    files = sorted(out.glob("random-*.json"))
    assert len(files) == 3 and all(count_flops(RSPNet(f, 19).eval(), (64, 64)) <= budget for f in files)
    for argv, message in ((flags + ["--within-budgets", "--out", str(tmp_path / "x")], "needs --flops-budget"),
                          (["--channels", "4", "--within-budgets"], "goes with --random")):
        capsys.readouterr()
        with pytest.raises(SystemExit):
            main(argv)
        assert message in capsys.readouterr().err


def test_random_cli_writes_architecture_files(tmp_path, capsys):
    out = tmp_path / "random"
    assert main(["--random", "3", "--channels", "4", "--layers", "3", "--seed", "7", "--out", str(out)]) == 0
    files = sorted(out.glob("random-*.json"))
    assert [f.name for f in files] == ["random-000.json", "random-001.json", "random-002.json"]
    for f in files:
        arch = Architecture.load(f)
        assert arch.layers == 3 and arch.channels == 4 and arch.search["random"]["seed"] == 7
    assert "3 random architectures (seed 7)" in capsys.readouterr().out


def test_entropy_of_beta_counts_only_the_nodes_that_choose():
    cell = derive_cell(torch.randn(10, 8))
    model = MacroSupernet(5, cell, channels=4, layers=3, head_channels=8)
    with torch.no_grad():
        for b in model.betas:
            b.normal_()
    choosing = [torch.softmax(b, 0) for b in model.betas if b.numel() > 1]
    expected = torch.stack([-(p * p.log()).sum() for p in choosing]).mean().item()
    assert [b.numel() for b in model.betas].count(1) == 2    # (1, 0) and (1, 1) read the stem only
    assert model.entropy()["beta"] == pytest.approx(expected, rel=1e-6)


def test_expected_params_follows_the_device_of_beta():
    """On CUDA the counts were made on the CPU and multiplied with softmax(β)
    on the GPU; ``meta`` fails the same way without a GPU."""
    cell = derive_cell(torch.randn(10, 8))
    with torch.device("meta"):
        model = MacroSupernet(5, cell, channels=4, layers=2, head_channels=8)
    assert model.expected_params().device.type == "meta"


def test_second_order_with_a_zero_vector_gives_a_zero_hessian_term():
    torch.manual_seed(0)
    model = SinglePathSupernet(5, channels=4, head_channels=8)
    architect = Architect(model, torch.optim.Adam(model.arch_parameters()), "second")
    weights = model.weight_parameters()
    batch = (torch.randn(2, 3, 32, 32), torch.randint(0, 5, (2, 32, 32)))
    original = [w.detach().clone() for w in weights]
    hv = architect._hessian_vector(batch, weights, original, [torch.zeros_like(w) for w in weights])
    assert all(torch.equal(h, torch.zeros_like(p)) for h, p in zip(hv, model.arch_parameters()))
