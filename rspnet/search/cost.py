"""The expected cost of the derived network, differentiable in α and β (docs/design.md §6).

A derived network is a sum of pieces whose cost does not depend on the
architecture logits: the stem, the head, every node's RSP block (its cell's
kept edges, each one op, plus a fixed part) and the path projections it keeps. ``CostTable`` measures each piece once per geometry with a
``measure(fn, inputs)``: ``count_flops_of`` (FLOPs) or ``LatencyMeter`` (ms
on the target device, cached on disk). Latency pieces are timed in their
inference form (``inference_piece``: what evaluate, predict and export run),
and the table is calibrated against whole networks of the geometry
(``latency_table``): pieces timed alone run faster than inside a network.

The expectation follows the derivation (``derive.py``):

* cell node ``t`` keeps ``min(2, t)`` incoming edges, each its arg-max
  non-``none`` op: its expected cost is ``min(2, t)`` times the mean over its
  incoming edges of ``Σ_k p̃_k c_k``, ``p̃`` = softmax(α) renormalised over the
  non-``none`` ops. Exact for one-hot α whose edges into a node agree;
* trellis node ``n`` keeps its ``top_k`` paths by softmax(β): path ``i`` is
  kept with probability ``q_i = min(1, λ p_i)``, ``λ`` such that ``Σ q = top_k``
  (``kept_probabilities``; all paths when there are at most ``top_k``), exact
  for a β whose ``top_k`` kept paths share the probability;
* a node survives if the head can reach it: last-layer nodes always, an
  earlier node with probability ``1 - Π_m (1 - a_m q_{m←n})`` over the next
  layer's nodes ``m`` that read it (the pruning of ``reaching_head``, with
  independent choices).

Stage 1 has no β yet: its cost is the trellis's under uniform β, so one
budget means the same in both stages.
"""
from __future__ import annotations

import json
import os
import statistics
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn as nn

from rspnet.architecture import PRIMITIVES, Architecture, Genotype, partial_channels, scale_widths
from rspnet.files import atomic_open
from rspnet.models.cost import count_flops_of
from rspnet.nn import (OPS, DerivedCell, PathAttention, RSPBlock, Stem, head_reads_stem, layer_nodes, make_head,
                       trellis_nodes)
from rspnet.nn.primitives import ConvBNReLU
from rspnet.ops.timing import device_name, median_ms  # device_name: the latency table's key

from .derive import same_scale_source

__all__ = ["CostGeometry", "CostTable", "LatencyMeter", "kept_probabilities", "cell_cost",
           "METRICS", "default_latency_table_path", "inference_piece", "calibration_architectures"]

METRICS = ("flops", "latency")
Measure = Callable[[Callable[..., Any], Sequence[torch.Tensor]], float]


@dataclass(frozen=True)
class CostGeometry:
    """Everything the pieces' costs depend on. ``size``: the input (H, W) the
    costs are measured at."""
    channels: int
    scales: int
    layers: int
    steps: int
    rsp_ratio: float
    rsp_depth: int
    head_channels: int
    num_classes: int
    size: tuple[int, int]
    top_k: int = 2
    primitives: tuple[str, ...] = PRIMITIVES
    head: str = "concat"
    scale_channels: tuple[int, ...] | None = None
    pool_first: bool = False
    same_scale: bool = False           # derive_paths(same_scale=): each node keeps its own scale's path

    @classmethod
    def of(cls, space, num_classes: int, size: Sequence[int]) -> "CostGeometry":
        """The geometry of the networks of a ``SearchSpace``, measured at ``size``."""
        return cls(space.channels, space.scales, space.layers, space.steps, space.rsp_ratio, space.rsp_depth,
                   space.head_width, num_classes, tuple(size), space.top_k, space.primitives, space.head,
                   space.scale_channels, space.pool_first, space.same_scale_paths)

    def width(self, scale: int) -> int:
        return scale_widths(self.channels, self.scales, self.scale_channels)[scale]

    def inner(self, scale: int) -> int:
        """Channels the cell sees at ``scale`` (after the RSP splits)."""
        c = self.width(scale)
        for _ in range(self.rsp_depth):
            c = partial_channels(c, self.rsp_ratio)
        return c

    def resolution(self, scale: int) -> tuple[int, int]:
        return self.size[0] >> (scale + 2), self.size[1] >> (scale + 2)

    def describe(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))


# ------------------------------------------------------------------ pieces
def _all_skip_cell(steps: int) -> Genotype:
    """A cell whose kept edges are identities: the RSP block's fixed part
    (projection, split, merge, the node sums) without any op cost."""
    normal = [("skip_connect", s, t) for t in range(1, steps + 1) for s in range(max(0, t - 2), t)]
    return Genotype(normal=tuple(normal), normal_concat=tuple(range(1, steps + 1)))


class _Path(nn.Module):
    """One kept path into a node: a one-path ``PathAttention`` (projection
    and resampling in the network's order) to the node's size."""

    def __init__(self, c_in: int, c_out: int, size: tuple[int, int], pool_first: bool = False):
        super().__init__()
        self.pam, self.size = PathAttention([c_in], c_out, pool_first=pool_first), size
        self.register_buffer("logits", torch.zeros(1))

    def extra_repr(self) -> str:
        return f"size={self.size}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pam([x], self.logits, self.size)


class _HeadAt(nn.Module):
    def __init__(self, head: nn.Module, image_size: tuple[int, int]):
        super().__init__()
        self.head, self.image_size = head, image_size

    def extra_repr(self) -> str:
        return f"image_size={self.image_size}"

    def forward(self, *features: torch.Tensor) -> torch.Tensor:
        return self.head(list(features), self.image_size)


def _pieces(g: CostGeometry, head_scales: Sequence[tuple[int, ...]]):
    """``(key, module, input shapes)`` of every piece a derived network of
    ``g`` can hold."""
    H, W = g.size
    pieces = [("stem", Stem(g.channels), [(1, 3, H, W)])]
    # a head that reads the stem's 1/2-scale map gets it as its first input
    # (its cost is the stem's: Stem(keep_half=True) computes the same)
    stem_map = [(1, g.channels, (H + 1) // 2, (W + 1) // 2)] if head_reads_stem(g.head) else []
    for scales in head_scales:
        head = make_head(g.head, [g.width(s) for s in scales], g.num_classes, g.head_channels,
                         stem_channels=g.channels)
        pieces.append((f"head:{','.join(map(str, scales))}", _HeadAt(head, g.size),
                       stem_map + [(1, g.width(s), *g.resolution(s)) for s in scales]))
    skip = _all_skip_cell(g.steps)
    for s in range(g.scales):
        c, (h, w) = g.width(s), g.resolution(s)
        block = RSPBlock(c, lambda ci: DerivedCell(ci, skip), g.rsp_ratio, g.rsp_depth)
        pieces.append((f"block:{s}", block, [(1, c, h, w)]))
        ci = g.inner(s)
        for name in g.primitives:
            if name != "none":
                pieces.append((f"op:{s}:{name}", OPS[name](ci, True), [(1, ci, h, w)]))
        if s + 1 < g.scales:
            pieces.append((f"down:{s}", ConvBNReLU(c, g.width(s + 1), 3, stride=2), [(1, c, h, w)]))
        for d in range(g.scales):   # a node reads every node of the layer before, any scale
            pieces.append((f"path:{s}:{d}", _Path(c, g.width(d), g.resolution(d), g.pool_first), [(1, c, h, w)]))
    return pieces


def inference_piece(module: nn.Module) -> nn.Module:
    """The inference form of one piece of ``_pieces``, as the piece runs in
    ``rspnet.models.inference_form(RSPNet(...))``: BatchNorms folded, derived
    cells folded, stems and heads channels-last, and 3×3 poolings separable
    also where a piece is a bare op (an edge's op in a cell is one already).
    Timing the training form instead ranks architectures by what the
    deployed network does not run (an unfolded BatchNorm, a 3×3 max pool that
    costs 10× its separable form)."""
    from rspnet.models.inference import inference_form
    from rspnet.models.simplify import _inference_op

    net = _inference_op(inference_form(module))
    for parent in list(net.modules()):
        for name, child in list(parent._modules.items()):
            parent._modules[name] = _inference_op(child)
    return net.eval()


def count_flops_as_measure(fn: Callable[..., Any], inputs: Sequence[torch.Tensor]) -> float:
    return float(count_flops_of(fn, *inputs))


# -------------------------------------------------------------- the table
def kept_probabilities(p: torch.Tensor, k: int) -> torch.Tensor:
    """``q_i = min(1, λ p_i)`` with ``λ`` such that ``Σ q = min(k, len(p))``:
    how likely the top-``k`` derivation keeps each path, differentiable in
    ``p`` (piecewise: water-filling, paths at 1 are fixed in turn)."""
    n = p.numel()
    if n <= k:
        return torch.ones_like(p)
    clamped = torch.zeros(n, dtype=torch.bool, device=p.device)
    q = k * p
    for _ in range(k):
        over = (q.detach() > 1) & ~clamped
        if not over.any():
            break
        clamped = clamped | over
        free = ~clamped
        q = torch.where(clamped, torch.ones_like(p), (k - clamped.sum()) * p / (p * free).sum())
    return q


def cell_cost(op_costs: torch.Tensor, probabilities: torch.Tensor, steps: int,
              primitives: Sequence[str]) -> torch.Tensor:
    """Expected cost of the kept edges of a cell: ``op_costs`` [ops] (the
    candidates at this scale), ``probabilities`` [edges, ops] softmax(α)."""
    keep = torch.tensor([name != "none" for name in primitives], device=probabilities.device)
    p = probabilities * keep
    p = p / p.sum(-1, keepdim=True)
    per_edge = p @ op_costs.to(p.dtype)
    total, e = 0, 0
    for t in range(1, steps + 1):
        total = total + min(2, t) * per_edge[e:e + t].mean()
        e += t
    return total


class CostTable:
    """The measured cost of every piece of the derived networks of one
    geometry (``entries``: piece key → cost) and the expected / exact cost of
    a network from them."""

    def __init__(self, geometry: CostGeometry, entries: Mapping[str, float], unit: str):
        self.geometry, self.entries, self.unit = geometry, dict(entries), unit
        self.calibration = 1.0   # a latency table's factor on the pieces' sum (latency_table)
        self.nodes = trellis_nodes(geometry.layers, geometry.scales)
        self.sources = [layer_nodes(self.nodes, layer - 1) for layer, _ in self.nodes]

    @classmethod
    def build(cls, geometry: CostGeometry, measure: Measure = count_flops_as_measure,
              unit: str = "flops", device: str | torch.device = "cpu",
              prepare: Callable[[nn.Module], nn.Module] | None = None) -> CostTable:
        """Measure every piece on ``device`` (modules in eval mode, no grad;
        ``prepare``: what each module is turned into first, e.g.
        ``inference_piece``)."""
        g = geometry
        last = tuple(range(min(g.layers, g.scales - 1) + 1))
        head_scales = sorted({last, tuple(range(g.scales))})
        entries = {}
        with torch.no_grad():
            for key, module, shapes in _pieces(g, head_scales):
                module = module.to(device).eval()
                if prepare is not None:
                    module = prepare(module).to(device).eval()
                inputs = [torch.randn(shape, device=device) for shape in shapes]
                entries[key] = measure(module, inputs)
        return cls(geometry, entries, unit)

    def __getitem__(self, key: str) -> float:
        return self.entries[key]

    def op_costs(self, scale: int) -> torch.Tensor:
        return torch.tensor([0.0 if n == "none" else self.entries[f"op:{scale}:{n}"]
                             for n in self.geometry.primitives], dtype=torch.float64)

    def genotype_cost(self, scale: int, genotype: Genotype) -> float:
        """The kept edges' cost of a derived cell at ``scale``."""
        return sum(self.entries[f"op:{scale}:{op}"] for op, _, _ in genotype.normal)

    # ------------------------------------------------------ expectations
    def expected(self, cell: torch.Tensor | Genotype, betas: Sequence[torch.Tensor] | None = None
                 ) -> torch.Tensor:
        """Expected cost of the derived trellis: ``cell`` is softmax(α)
        ([edges, ops]) or a fixed ``Genotype``; ``betas`` the logits of every
        node (``None``: uniform, as stage 1 assumes)."""
        g = self.geometry
        if isinstance(cell, Genotype):
            dtype = betas[0].dtype if betas else torch.float64
            device = betas[0].device if betas else None
            cells = [torch.tensor(self.genotype_cost(s, cell), dtype=dtype, device=device)
                     for s in range(g.scales)]
        else:
            dtype, device = cell.dtype, cell.device
            cells = [cell_cost(self.op_costs(s).to(cell.device), cell, g.steps, g.primitives)
                     for s in range(g.scales)]
        kept = {}
        for i, (node, src) in enumerate(zip(self.nodes, self.sources)):
            if betas is None:
                p = torch.full((len(src),), 1.0 / len(src), dtype=dtype, device=device)
            else:
                p = torch.softmax(betas[i].to(dtype), 0)
            kept[node] = self._kept(node, src, p)
        alive = self._alive(kept)
        head = ",".join(map(str, range(min(g.layers, g.scales - 1) + 1)))
        total = self.entries["stem"] + self.entries[f"head:{head}"]
        for node, src in zip(self.nodes, self.sources):
            s = node[1]
            node_cost = self.entries[f"block:{s}"] + cells[s]
            paths = torch.tensor([self.entries[f"path:{source[1]}:{s}"] for source in src], dtype=dtype,
                                 device=kept[node].device)
            total = total + alive[node] * (node_cost + (kept[node] * paths).sum())
        return total

    def _kept(self, node: tuple[int, int], sources: Sequence[tuple[int, int]], p: torch.Tensor) -> torch.Tensor:
        """How likely the derivation keeps each path of ``node``: the water-filling
        of ``kept_probabilities``, or with ``same_scale`` the node's own scale
        kept surely and the water-filling over the others for ``top_k - 1``."""
        forced = same_scale_source(node, sources) if self.geometry.same_scale else None
        if forced is None:
            return kept_probabilities(p, self.geometry.top_k)
        rest = [i for i in range(len(sources)) if i != forced]
        k = min(self.geometry.top_k, len(sources)) - 1
        q_rest = kept_probabilities(p[rest] / p[rest].sum(), k) if k > 0 else p[rest] * 0
        index = torch.tensor(rest, dtype=torch.long, device=p.device)
        return p.new_ones(len(sources)).index_copy(0, index, q_rest)

    def _alive(self, kept: Mapping[tuple[int, int], torch.Tensor]) -> dict:
        """Probability that each node reaches the head."""
        alive: dict = {}
        for node, src in reversed(list(zip(self.nodes, self.sources))):
            if node[0] == self.geometry.layers:
                alive[node] = 1.0
        for layer in range(self.geometry.layers - 1, 0, -1):
            readers = [(m, src) for m, src in zip(self.nodes, self.sources) if m[0] == layer + 1]
            for node in [n for n in self.nodes if n[0] == layer]:
                missed = 1.0
                for m, src in readers:
                    if node in src:
                        missed = missed * (1 - alive[m] * kept[m][src.index(node)])
                alive[node] = 1 - missed
        return alive

    # --------------------------------------------------------- exact
    def architecture(self, arch: Architecture) -> float:
        """The cost of a derived network, summed from the table."""
        cells = [self.genotype_cost(s, arch.cell) + self.entries[f"block:{s}"] for s in range(arch.scales)]
        if arch.nodes is None:
            total = self.entries["stem"] + self.entries[f"head:{','.join(map(str, range(arch.scales)))}"]
            total += sum(cells) + sum(self.entries[f"down:{s}"] for s in range(arch.scales - 1))
            return total
        last = sorted(n.node[1] for n in arch.nodes if n.node[0] == arch.layers)
        total = self.entries["stem"] + self.entries[f"head:{','.join(map(str, last))}"]
        for n in arch.nodes:
            s = n.node[1]
            total += cells[s] + sum(self.entries[f"path:{src[1]}:{s}"] for src, _ in n.paths)
        return total

    def to_dict(self) -> dict[str, Any]:
        return {"geometry": asdict(self.geometry), "unit": self.unit, "entries": self.entries}


# -------------------------------------------------------------- latency
def default_latency_table_path() -> str:
    """``$RSPNET_LATENCY_TABLE``, else ``~/.cache/rspnet/latency.json``."""
    return os.environ.get("RSPNET_LATENCY_TABLE") or os.path.join(
        os.path.expanduser("~"), ".cache", "rspnet", "latency.json")


def time_ms(fn: Callable[..., Any], inputs: Sequence[torch.Tensor], repeats: int = 9, warmup: int = 3) -> float:
    """The median ms of ``fn(*inputs)`` over ``repeats`` calls after ``warmup``
    (``rspnet.ops.timing.median_ms``; CUDA events when the inputs are on a GPU)."""
    return median_ms(lambda: fn(*inputs), repeats, warmup, cuda=inputs[0].is_cuda)


class LatencyMeter:
    """A ``measure`` for ``CostTable.build`` that times each piece once and
    keeps it in a JSON file keyed by device, torch version, piece and input
    shapes, so that a table is measured once per device and reused.

    ``timer(fn, inputs) -> ms`` defaults to ``time_ms``; tests inject one.
    """

    def __init__(self, path: str | os.PathLike | None, device: torch.device,
                 timer: Callable[[Callable[..., Any], Sequence[torch.Tensor]], float] = time_ms):
        self.path, self.device, self.timer = path, torch.device(device), timer
        self.entries: dict[str, float] = {}
        self.measured = 0
        if path is not None and os.path.exists(path):
            self.entries = self._read(os.fspath(path))

    @staticmethod
    def _read(path: str) -> dict[str, float]:
        """The cached entries of ``path``. The file is a cache: one that
        cannot be read (damaged, not rspnet's) is warned about, naming it and
        the flag, and measured afresh and rewritten."""
        try:
            with open(path, encoding="utf-8") as f:
                entries = json.load(f)["entries"]
            return {str(k): float(v) for k, v in entries.items()}
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            warnings.warn(f"--latency-table {path}: not a readable latency cache ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}); measuring afresh and "
                          f"rewriting it", RuntimeWarning, stacklevel=3)
            return {}

    def key(self, module: nn.Module, inputs: Sequence[torch.Tensor]) -> str:
        shapes = ";".join("x".join(map(str, x.shape)) for x in inputs)
        return f"{device_name(self.device)}|torch {torch.__version__}|{module!r}|{shapes}".replace("\n", " ")

    def __call__(self, module: nn.Module, inputs: Sequence[torch.Tensor]) -> float:
        return self._entry(self.key(module, inputs), lambda: self.timer(module, inputs))

    def cached(self, name: str, measure: Callable[[], float]) -> float:
        """The entry ``name`` (keyed by device and torch version as the
        pieces are), measured and kept when absent."""
        return self._entry(f"{device_name(self.device)}|torch {torch.__version__}|{name}", measure)

    def _entry(self, key: str, measure: Callable[[], float]) -> float:
        if key not in self.entries:
            self.entries[key] = float(measure())
            self.measured += 1
        return self.entries[key]

    def save(self) -> None:
        if self.path is None or not self.measured:
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        text = json.dumps({"entries": self.entries}, indent=1, sort_keys=True) + "\n"
        with atomic_open(self.path) as f:
            f.write(text.encode())


_FLOPS_TABLES: dict[CostGeometry, CostTable] = {}


def flops_table(geometry: CostGeometry) -> CostTable:
    """The FLOPs table of ``geometry``, built once per process."""
    if geometry not in _FLOPS_TABLES:
        _FLOPS_TABLES[geometry] = CostTable.build(geometry)
    return _FLOPS_TABLES[geometry]


CALIBRATION_NETS = 3   # whole networks timed to calibrate a latency table
CALIBRATION_SEED = 0


def calibration_architectures(geometry: CostGeometry, count: int = CALIBRATION_NETS,
                              seed: int = CALIBRATION_SEED) -> list[Architecture]:
    """``count`` trellis architectures of ``geometry`` drawn at random (the
    random baseline's draw), the same ones for every call."""
    import random

    from .baseline import random_cell, random_paths

    g, rng = geometry, random.Random(seed)
    archs = []
    for _ in range(count):
        cell = random_cell(g.steps, rng, g.primitives)
        nodes = random_paths(g.layers, g.scales, g.top_k, rng, g.same_scale)
        archs.append(Architecture(cell=cell, channels=g.channels, scales=g.scales, head_channels=g.head_channels,
                                  head=g.head, scale_channels=g.scale_channels, rsp_ratio=g.rsp_ratio,
                                  rsp_depth=g.rsp_depth, layers=g.layers, pool_first=g.pool_first, nodes=nodes))
    return archs


def latency_table(geometry: CostGeometry, device: str | torch.device = "cpu",
                  path: str | os.PathLike | None = None, threads: int | None = 1,
                  timer=time_ms, calibrate: int = CALIBRATION_NETS) -> CostTable:
    """The latency table (ms) of ``geometry`` on ``device``: the pieces not
    yet in the file at ``path`` are timed in their inference form
    (``inference_piece``; on CPU with ``threads`` threads, one by default:
    the latency rspnet reports) and written back.

    Calibrated: ``calibrate`` whole networks of the geometry
    (``calibration_architectures``) are timed in their inference form, and
    every entry is multiplied by the median over them of (the network's time
    / the table's sum for it), kept as the table's ``calibration`` (cached
    like the pieces). Pieces timed alone, their inputs warm in cache, add up
    to less than the network they make (0.6× of it on a 2-core CPU at
    384×480); the factor makes a budget in ms mean the whole network's ms.
    ``calibrate=0``: the raw sum."""
    device = torch.device(device)
    previous = torch.get_num_threads()
    if device.type == "cpu" and threads:
        torch.set_num_threads(threads)
    try:
        meter = LatencyMeter(path, device, timer)
        table = CostTable.build(geometry, meter, unit="ms", device=device, prepare=inference_piece)
        factor = 1.0
        if calibrate:
            factor = meter.cached(f"calibration|{geometry.describe()}|{calibrate} nets, seed {CALIBRATION_SEED}",
                                  lambda: _calibration(table, device, timer, calibrate))
        meter.save()
    finally:
        torch.set_num_threads(previous)
    calibrated = CostTable(geometry, {k: v * factor for k, v in table.entries.items()}, unit="ms")
    calibrated.calibration = factor
    return calibrated


def _calibration(table: CostTable, device: torch.device, timer, count: int) -> float:
    """The median over ``count`` random networks of their inference form's
    time / the (uncalibrated) ``table``'s sum for them."""
    from rspnet.models import RSPNet, inference_form

    g, ratios = table.geometry, []
    with torch.no_grad():
        for arch in calibration_architectures(g, count):
            torch.manual_seed(0)
            net = inference_form(RSPNet(arch, g.num_classes)).to(device).eval()
            x = torch.randn(1, 3, *g.size, device=device)
            ratios.append(float(timer(net, [x])) / table.architecture(arch))
    return statistics.median(ratios)
