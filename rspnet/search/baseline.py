"""The random baseline: architectures drawn uniformly from the search space.

A NAS result counts only against architectures drawn at random from the same
space and trained with the same recipe (Li & Talwalkar 2019; Yang et al. 2020).
``random_architecture`` draws one the way the derivation shapes a searched
one: every intermediate cell node ``t`` keeps ``min(2, t)`` distinct
predecessors, each with a uniform non-``none`` operation; every trellis node
keeps ``top_k`` distinct sources drawn uniformly, with equal weights; nodes
that cannot reach the head are pruned. ``python -m rspnet.search --random N``
writes N of them.
"""
from __future__ import annotations

import random
from typing import Mapping, Sequence

from rspnet.architecture import PRIMITIVES, Architecture, Genotype, KeptNode, reaching_head
from rspnet.nn import layer_nodes, trellis_nodes

from .derive import same_scale_source

__all__ = ["random_cell", "random_paths", "random_architecture", "sample_architectures",
           "write_random_architectures"]


def random_cell(steps: int, rng: random.Random, primitives: Sequence[str] = PRIMITIVES) -> Genotype:
    ops = [name for name in primitives if name != "none"]
    normal = []
    for target in range(1, steps + 1):
        for source in sorted(rng.sample(range(target), min(2, target))):
            normal.append((rng.choice(ops), source, target))
    return Genotype(normal=tuple(normal), normal_concat=tuple(range(1, steps + 1)))


def random_paths(layers: int, scales: int, top_k: int, rng: random.Random,
                 same_scale: bool = False) -> tuple[KeptNode, ...]:
    """``same_scale``: each node keeps its own scale's path and draws the rest
    (the search's ``--same-scale-paths`` space)."""
    nodes = trellis_nodes(layers, scales)
    chosen = {}
    for node in nodes:
        sources = layer_nodes(nodes, node[0] - 1)
        forced = same_scale_source(node, sources) if same_scale else None
        if forced is None:
            kept = sorted(rng.sample(range(len(sources)), min(top_k, len(sources))))
        else:
            rest = [i for i in range(len(sources)) if i != forced]
            kept = sorted([forced] + rng.sample(rest, min(top_k, len(sources)) - 1))
        chosen[node] = tuple((tuple(sources[i]), 1.0 / len(kept)) for i in kept)
    alive = reaching_head({node: [s for s, _ in paths] for node, paths in chosen.items()})
    return tuple(KeptNode(node, paths) for node, paths in chosen.items() if node in alive)


def random_architecture(config, rng: random.Random, search: dict | None = None) -> Architecture:
    """One architecture of ``config``'s space (a ``SearchConfig``)."""
    space = config.space
    cell = random_cell(space.steps, rng, space.primitives)
    return space.architecture(cell, random_paths(space.layers, space.scales, space.top_k, rng,
                                                 space.same_scale_paths), search)


def sample_architectures(config, count: int, seed: int = 0, max_params: float | None = None,
                         num_classes: int = 19, max_draws: int = 10_000, probe: int = 200,
                         progress: bool = False, max_costs: Mapping[str, tuple] | None = None
                         ) -> list[tuple[Architecture, int]]:
    """``count`` random architectures with their parameter counts, from a
    generator seeded with ``seed``; with ``max_params``, only those within it;
    with ``max_costs`` (flag → (cost table, budget), e.g. ``--latency-budget``
    → a latency ``CostTable`` and its ms), only those whose table cost is
    within every budget. ``ValueError`` naming the budget that rejects most
    draws as soon as ``max_draws`` draws cannot give ``count`` at the rate seen
    after ``probe`` draws (so an impossible budget fails in seconds, not
    after every draw)."""
    from tqdm import tqdm

    from rspnet.models import RSPNet, count_params

    rng = random.Random(seed)
    found: list[tuple[Architecture, int]] = []
    limits = dict(max_costs or {})
    smallest: dict[str, float] = {}
    rejected = {flag: 0 for flag in ("--param-budget", *limits)}
    bar = tqdm(total=count, desc="random architectures", unit="arch", disable=not progress, leave=False)
    for draw in range(max_draws):
        if len(found) == count:
            break
        arch = random_architecture(config, rng, {"random": {"seed": seed, "draw": draw}})
        params = count_params(RSPNet(arch, num_classes))
        values = {"--param-budget": (params, max_params)}
        values.update({flag: (table.architecture(arch), budget) for flag, (table, budget) in limits.items()})
        over = [flag for flag, (value, budget) in values.items() if budget is not None and value > budget]
        for flag, (value, _) in values.items():
            smallest[flag] = min(smallest.get(flag, value), value)
        for flag in over:
            rejected[flag] += 1
        if not over:
            found.append((arch, params))
            bar.update()
        done = draw + 1
        if done >= probe and (count - len(found)) * done > len(found) * (max_draws - done):
            break   # at this rate the draws left cannot find the rest
    bar.close()
    if len(found) < count:
        flag = max(rejected, key=rejected.get)
        budget = max_params if flag == "--param-budget" else limits[flag][1]
        unit, scale = {"--param-budget": ("M parameters", 1e6), "--flops-budget": ("GFLOPs", 1e9),
                       "--latency-budget": ("ms", 1.0)}.get(flag, ("", 1.0))
        raise ValueError(f"{flag} {budget / scale:g}: only {len(found)} of {done} random architectures are within "
                         f"it (the cheapest drawn: {smallest[flag] / scale:.3f} {unit}), too few to find {count} in "
                         f"{max_draws} draws; raise {flag}")
    return found


def write_random_architectures(config, count: int, out_dir: str, seed: int = 0,
                               max_params: float | None = None, num_classes: int = 19,
                               progress: bool = False, max_costs: Mapping[str, tuple] | None = None
                               ) -> list[tuple[str, int]]:
    """``out_dir/random-NNN.json`` for ``sample_architectures``; returns
    (path, parameters) of each. ``ValueError`` before anything is drawn when
    ``out_dir`` cannot be written or already holds one of those files."""
    import os

    from rspnet.files import check_output_dir

    check_output_dir(out_dir, "--out")
    paths = [os.path.join(out_dir, f"random-{i:03d}.json") for i in range(count)]
    taken = [p for p in paths if os.path.lexists(p)]
    if taken:
        raise ValueError(f"--out {out_dir} already holds {os.path.basename(taken[0])}; choose another --out")
    drawn = sample_architectures(config, count, seed, max_params, num_classes, progress=progress,
                                 max_costs=max_costs)
    os.makedirs(out_dir, exist_ok=True)
    for path, (arch, _) in zip(paths, drawn):
        arch.save(path)
    return [(path, params) for path, (_, params) in zip(paths, drawn)]
