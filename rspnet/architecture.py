"""The architecture: the vocabulary of a searched network and its file.

Named, written and read here, depending on nothing in rspnet but
``rspnet.files``: the building blocks (``rspnet.nn``), the search and the
derived network (``rspnet.models``) all speak it. The vocabulary is kept
recognisable for DARTS readers (its ``genotypes.py``):

* ``PRIMITIVES`` (DARTS's eight), ``LIGHT_PRIMITIVES`` (inverted residuals
  beside ``none`` and ``skip_connect``), ``CANDIDATE_SETS`` (the sets a search
  can use) and ``OP_NAMES`` (every op a file may name).
* ``Genotype``: a derived cell, ``normal`` = ``(op, source, target)`` per kept
  edge and ``normal_concat`` the nodes concatenated into its output.
* ``KeptNode``: a trellis node ``(layer, scale)`` with the paths it keeps,
  ``((source node, weight), ...)`` summing to 1.
* ``format_cell`` / ``format_paths``: the one-line forms the logs print;
  ``edge_list``, ``partial_channels``, ``reaching_head``: which edges exist,
  how many channels an RSP block sends through its cell, which nodes feed the
  head; ``rescaled``: an architecture at other widths.

The file (``architecture.json``, schema in docs/design.md §8) is validated
on load, every error naming the offending field (e.g. ``cell.normal[3].op``).
There is one way to read an architecture: ``Architecture.load(source)``, a
path, its parsed JSON or an ``Architecture``.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import dataclasses
from collections import namedtuple
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from rspnet.files import atomic_open, parse_json, read_small_text

__all__ = ["PRIMITIVES", "LIGHT_PRIMITIVES", "CANDIDATE_SETS", "OP_NAMES", "Genotype", "KeptNode", "Architecture", "SCHEMA_VERSION", "HEAD_KINDS", "scale_widths", "edge_list", "rescaled",
           "partial_channels", "reaching_head", "format_cell", "format_paths", "cell_to_dict",
           "cell_from_dict"]

# DARTS's names and order, so that genotypes read as in the DARTS papers and code.
PRIMITIVES = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)

# Inverted residuals ``mbconv_{k}x{k}_e{expand}``: 1×1 expansion, k×k depthwise,
# 1×1 projection, residual (a cell's edges keep shape); MobileNetV2's block.
LIGHT_PRIMITIVES = (
    "none",
    "skip_connect",
    "mbconv_3x3_e3",
    "mbconv_3x3_e6",
    "mbconv_5x5_e3",
    "mbconv_5x5_e6",
)
CANDIDATE_SETS = {
    "darts": PRIMITIVES,
    "light": LIGHT_PRIMITIVES,
    "both": PRIMITIVES + tuple(n for n in LIGHT_PRIMITIVES if n not in PRIMITIVES),
    # DARTS's set without its two poolings: parameter-free ops that win a
    # search's early epochs as skip_connect does, but unlike a skip they blur
    "nopool": tuple(n for n in PRIMITIVES if n not in ("max_pool_3x3", "avg_pool_3x3")),
}
OP_NAMES = CANDIDATE_SETS["both"]

Genotype = namedtuple("Genotype", "normal normal_concat")
KeptNode = namedtuple("KeptNode", "node paths")

SCHEMA_VERSION = 1
# the segmentation heads an architecture can name (rspnet.nn.head.HEADS)
HEAD_KINDS = ("concat", "light", "detail")
_WEIGHT_SUM_TOLERANCE = 1e-6  # for hand-edited files; files we write sum to 1 within 1e-15


# ------------------------------------------------------------------- rules
def edge_list(steps: int) -> list[tuple[int, int]]:
    """``(source, target)`` of every edge of a search cell, in parameter order:
    node ``t`` (1..steps) reads every earlier node, the input being node 0."""
    return [(source, target) for target in range(1, steps + 1) for source in range(target)]


def partial_channels(channels: int, rsp_ratio: float) -> int:
    """Channels of an RSP block's partial branch; raises if the split or the
    two-group shuffle cannot be made."""
    split = int(round(channels * rsp_ratio))
    if not 0 < split < channels or channels % 2:
        raise ValueError(f"{channels} channels cannot be split with rsp_ratio={rsp_ratio} "
                         "(need an even count and 0 < partial < channels)")
    return split


def reaching_head(kept: Mapping[tuple[int, int], Sequence[tuple[int, int]]]) -> set[tuple[int, int]]:
    """The nodes from which the head can be reached, given each node's kept
    sources: the last layer's nodes and, layer by layer backwards, every
    source a reaching node keeps."""
    last = max(layer for layer, _ in kept)
    alive = {node for node in kept if node[0] == last}
    for layer in range(last, 1, -1):
        for node in [n for n in alive if n[0] == layer]:
            alive.update(kept[node])
    return alive


def format_cell(genotype: Genotype) -> str:
    """One line: ``node=op(source)+op(source)`` per intermediate node."""
    nodes: dict[int, list[str]] = {}
    for op, source, target in genotype.normal:
        nodes.setdefault(target, []).append(f"{op}({source})")
    return " ".join(f"{t}={'+'.join(edges)}" for t, edges in sorted(nodes.items()))


def format_paths(kept: Sequence[KeptNode]) -> str:
    """One line: ``layer.scale<source:weight+...`` per kept node."""
    return " ".join(
        f"{n.node[0]}.{n.node[1]}<" + "+".join(f"{s[0]}.{s[1]}:{w:.2f}" for s, w in n.paths)
        for n in kept)


# ---------------------------------------------------------------- encoding
def cell_to_dict(cell: Genotype) -> dict[str, Any]:
    """The one encoding of a cell, as the architecture file's ``cell`` entry
    (and a search checkpoint's) holds it."""
    return {"steps": max(target for _, _, target in cell.normal),
            "normal": [{"op": op, "from": s, "to": t} for op, s, t in cell.normal],
            "normal_concat": list(cell.normal_concat)}


def scale_widths(channels: int, scales: int, scale_channels: Sequence[int] | None = None) -> tuple[int, ...]:
    """Channels of every scale, finest first: ``scale_channels`` when given
    (``ValueError`` unless it has one even entry per scale, the first being
    ``channels``, the stem's width), else ``channels * 2**s``."""
    if scale_channels is None:
        return tuple(channels * 2 ** s for s in range(scales))
    widths = tuple(scale_channels)
    if len(widths) != scales:
        raise ValueError(f"needs one width per scale ({scales}), got {list(widths)}")
    if widths[0] != channels:
        raise ValueError(f"the first width is the channels of scale 0 ({channels}), got {widths[0]}")
    if any(c < 2 or c % 2 for c in widths):
        raise ValueError(f"every width must be even and >= 2 (the RSP merge shuffles two groups), "
                         f"got {list(widths)}")
    return widths


def cell_from_dict(data: Any) -> Genotype:
    """The cell of ``cell_to_dict``'s encoding, validated (``ValueError``
    naming the field)."""
    return _parse_cell(data)


@dataclass(frozen=True)
class Architecture:
    """A derived architecture. ``nodes`` is None for the single-path topology."""
    cell: Genotype
    channels: int
    scales: int
    head_channels: int
    rsp_ratio: float = 0.5
    rsp_depth: int = 1
    layers: int | None = None
    nodes: tuple[KeptNode, ...] | None = None
    search: dict = field(default_factory=dict)
    head: str = "concat"        # rspnet.nn.head.HEADS
    # channels of each scale; None: channels * 2**s (the doubling of Auto-DeepLab)
    scale_channels: tuple[int, ...] | None = None
    # trellis paths to a coarser node pooled before their projection (PathAttention)
    pool_first: bool = False

    @property
    def widths(self) -> tuple[int, ...]:
        """Channels of every scale, finest first."""
        return scale_widths(self.channels, self.scales, self.scale_channels)

    @property
    def steps(self) -> int:
        return max(target for _, _, target in self.cell.normal)

    def to_dict(self) -> dict[str, Any]:
        macro = None
        if self.nodes is not None:
            macro = {"layers": self.layers,
                     "nodes": [{"node": list(n.node),
                                "paths": [{"from": list(src), "weight": w} for src, w in n.paths]}
                               for n in self.nodes],
                     **({"pool_first": True} if self.pool_first else {})}
        return {
            "schema_version": SCHEMA_VERSION,
            "cell": cell_to_dict(self.cell),
            "widths": {"channels": self.channels, "scales": self.scales,
                       "head_channels": self.head_channels,
                       # written only when it is not the default, so that the
                       # files (and structures) of earlier versions stay as they were
                       **({} if self.head == "concat" else {"head": self.head}),
                       **({} if self.scale_channels is None
                          else {"scale_channels": list(self.scale_channels)})},
            "rsp": {"ratio": self.rsp_ratio, "depth": self.rsp_depth},
            "macro": macro,
            "search": self.search,
        }

    def structure(self) -> dict[str, Any]:
        """What decides the network: ``to_dict()`` without the free-form
        provenance (``search``), which does not change a single weight."""
        data = self.to_dict()
        data.pop("search", None)
        return data

    def fingerprint(self) -> str:
        """12 hex digits of the SHA-256 of ``structure()``: equal for two
        files that build the same network."""
        text = json.dumps(self.structure(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def save(self, path: str | os.PathLike) -> None:
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        with atomic_open(path) as f:
            f.write(text.encode())

    @classmethod
    def load(cls, source: str | os.PathLike | Mapping | Architecture) -> Architecture:
        """From a file path, an already parsed JSON object, or an
        ``Architecture`` (returned as it is). ``ValueError`` names the
        offending field; ``FileNotFoundError`` / ``OSError`` as ``open``."""
        if isinstance(source, Architecture):
            return source
        if not isinstance(source, (str, os.PathLike)):
            return _parse(source)   # a parsed document (anything else is refused by name)
        data = parse_json(read_small_text(source, "architecture file"), "architecture file", source)
        return _parse(data)


# ------------------------------------------------------------------ validation
# Bounds far beyond any light-weight network, so that a typo cannot ask for
# terabytes: channels of a scale or the head, and scales (1/4 .. 1/2^(s+1)).
MAX_WIDTH = 4096
MAX_SCALES = 8


def _fail(where: str, message: str) -> None:
    raise ValueError(f"architecture file: {where}: {message}")


def _object(data: Any, where: str, keys: tuple[str, ...], optional: tuple[str, ...] = ()) -> Mapping:
    if not isinstance(data, Mapping):
        _fail(where, f"expected an object, got {type(data).__name__}")
    for key in keys:
        if key not in data:
            _fail(f"{where}.{key}" if where != "(top level)" else key, "missing")
    for key in data:
        if key not in keys + optional:
            _fail(where, f"unknown field {key!r}")
    return data


def _int(value: Any, where: str, low: int, high: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        _fail(where, f"expected an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        _fail(where, f"{value} is out of range [{low}, {'∞' if high is None else high}]")
    return value


def _list(value: Any, where: str, nonempty: bool = True) -> list:
    if not isinstance(value, list):
        _fail(where, f"expected a list, got {type(value).__name__}")
    if nonempty and not value:
        _fail(where, "must not be empty")
    return value


def _node(value: Any, where: str) -> tuple[int, int]:
    if not (isinstance(value, list) and len(value) == 2):
        _fail(where, f"expected [layer, scale], got {value!r}")
    return _int(value[0], f"{where}[0]", 0), _int(value[1], f"{where}[1]", 0)


def _parse_cell(data: Any) -> Genotype:
    cell = _object(data, "cell", ("steps", "normal", "normal_concat"))
    steps = _int(cell["steps"], "cell.steps", 1)
    normal, seen = [], set()
    for i, item in enumerate(_list(cell["normal"], "cell.normal")):
        where = f"cell.normal[{i}]"
        edge = _object(item, where, ("op", "from", "to"))
        op = edge["op"]
        if op not in OP_NAMES:
            _fail(f"{where}.op", f"{op!r} is not one of PRIMITIVES or LIGHT_PRIMITIVES")
        if op == "none":
            _fail(f"{where}.op", "'none' cannot be a kept edge")
        target = _int(edge["to"], f"{where}.to", 1, steps)
        source = _int(edge["from"], f"{where}.from", 0, target - 1)
        if (source, target) in seen:
            _fail(where, f"duplicate edge {source} -> {target}")
        seen.add((source, target))
        normal.append((op, source, target))
    fed = {t for _, t in seen}
    for node in range(1, steps + 1):
        if node not in fed:
            _fail("cell.normal", f"node {node} has no incoming edge")
    concat = _list(cell["normal_concat"], "cell.normal_concat")
    for i, node in enumerate(concat):
        _int(node, f"cell.normal_concat[{i}]", 1, steps)
    if len(set(concat)) != len(concat):
        _fail("cell.normal_concat", f"repeated node in {concat}")
    return Genotype(normal=tuple(normal), normal_concat=tuple(sorted(concat)))


def _parse_macro(data: Any, scales: int) -> tuple[int, tuple[KeptNode, ...], bool]:
    macro = _object(data, "macro", ("layers", "nodes"), optional=("pool_first",))
    pool_first = macro.get("pool_first", False)
    if not isinstance(pool_first, bool):
        _fail("macro.pool_first", f"expected true or false, got {pool_first!r}")
    layers = _int(macro["layers"], "macro.layers", 1)
    raw = _list(macro["nodes"], "macro.nodes")
    declared = {}
    for i, item in enumerate(raw):
        where = f"macro.nodes[{i}]"
        entry = _object(item, where, ("node", "paths"))
        layer, scale = _node(entry["node"], f"{where}.node")
        _int(layer, f"{where}.node[0]", 1, layers)
        _int(scale, f"{where}.node[1]", 0, min(layer, scales - 1))
        if (layer, scale) in declared:
            _fail(f"{where}.node", f"node {[layer, scale]} is listed twice")
        declared[(layer, scale)] = (i, entry)
    nodes = []
    for (layer, scale), (i, entry) in sorted(declared.items()):
        paths, total = [], 0.0
        for j, item in enumerate(_list(entry["paths"], f"macro.nodes[{i}].paths")):
            where = f"macro.nodes[{i}].paths[{j}]"
            path = _object(item, where, ("from", "weight"))
            source = _node(path["from"], f"{where}.from")
            if source[0] != layer - 1:
                _fail(f"{where}.from", f"{list(source)} is not in layer {layer - 1}, the one before {[layer, scale]}")
            if source != (0, 0) and source not in declared:
                _fail(f"{where}.from", f"{list(source)} is not a node of this network")
            if any(source == s for s, _ in paths):
                _fail(f"{where}.from", f"{list(source)} is read twice")
            weight = path["weight"]
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) \
                    or not math.isfinite(weight) or weight <= 0:
                _fail(f"{where}.weight", f"expected a positive number, got {weight!r}")
            paths.append((source, float(weight)))
            total += weight
        if abs(total - 1.0) > _WEIGHT_SUM_TOLERANCE:
            _fail(f"macro.nodes[{i}].paths", f"weights sum to {total}, not 1")
        nodes.append(KeptNode((layer, scale), tuple(paths)))
    if not any(layer == layers for layer, _ in declared):
        _fail("macro.nodes", f"no node in the last layer ({layers})")
    alive = reaching_head({n.node: [s for s, _ in n.paths] for n in nodes})
    for node, (i, _) in sorted(declared.items()):
        if node not in alive:
            _fail(f"macro.nodes[{i}]", f"node {list(node)} does not reach the head")
    return layers, tuple(nodes), pool_first


def _parse(data: Any) -> Architecture:
    root = _object(data, "(top level)",
                   ("schema_version", "cell", "widths", "rsp", "macro"), optional=("search",))
    version = root["schema_version"]
    if version != SCHEMA_VERSION or isinstance(version, bool):
        _fail("schema_version", f"{version!r} is not supported (this rspnet reads {SCHEMA_VERSION})")
    cell = _parse_cell(root["cell"])
    widths = _object(root["widths"], "widths", ("channels", "scales", "head_channels"),
                     optional=("head", "scale_channels"))
    channels = _int(widths["channels"], "widths.channels", 2, MAX_WIDTH)
    scales = _int(widths["scales"], "widths.scales", 1, MAX_SCALES)
    head_channels = _int(widths["head_channels"], "widths.head_channels", 1, MAX_WIDTH)
    head = widths.get("head", "concat")
    if head not in HEAD_KINDS:
        _fail("widths.head", f"expected one of {', '.join(map(repr, HEAD_KINDS))}, got {head!r}")
    scale_channels = widths.get("scale_channels")
    if scale_channels is not None:
        if not isinstance(scale_channels, list):
            _fail("widths.scale_channels", f"expected a list, got {scale_channels!r}")
        scale_channels = tuple(_int(c, f"widths.scale_channels[{i}]", 2, MAX_WIDTH)
                               for i, c in enumerate(scale_channels))
        try:
            scale_widths(channels, scales, scale_channels)
        except ValueError as exc:
            _fail("widths.scale_channels", str(exc))
    if max(scale_widths(channels, scales, scale_channels)) > MAX_WIDTH:
        _fail("widths", f"channels {channels} doubled over {scales} scales reach "
                        f"{max(scale_widths(channels, scales, scale_channels))}, more than {MAX_WIDTH}")
    rsp = _object(root["rsp"], "rsp", ("ratio", "depth"))
    ratio = rsp["ratio"]
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < 1:
        _fail("rsp.ratio", f"expected a number in (0, 1), got {ratio!r}")
    depth = _int(rsp["depth"], "rsp.depth", 1)
    for scale, width in enumerate(scale_widths(channels, scales, scale_channels)):
        c = width
        try:
            for _ in range(depth):
                c = partial_channels(c, ratio)
        except ValueError as exc:
            _fail("rsp", f"at scale {scale} ({width} channels): {exc}")
    layers, nodes, pool_first = ((None, None, False) if root["macro"] is None
                                 else _parse_macro(root["macro"], scales))
    search = root.get("search", {})
    if not isinstance(search, Mapping):
        _fail("search", f"expected an object, got {type(search).__name__}")
    return Architecture(cell=cell, channels=channels, scales=scales, head_channels=head_channels,
                        head=head, scale_channels=scale_channels, rsp_ratio=float(ratio), rsp_depth=depth,
                        layers=layers, nodes=nodes, pool_first=pool_first, search=dict(search))


def rescaled(arch: Architecture, channels: int | None = None, scale_channels: Sequence[int] | None = None,
             rsp_ratio: float | None = None, head: str | None = None, head_channels: int | None = None,
             pool_first: bool | None = None, source: str | None = None) -> Architecture:
    """``arch`` at other widths, RSP ratio, head or path order (None keeps a
    setting), everything the search chose kept; validated as a file is
    (``ValueError`` naming the field). What the search chooses -- operations,
    edges, kept paths and their weights -- does not depend on the widths, so
    a proxy's architecture can be trained wider. ``search.rescaled`` records
    ``source`` and the changes."""
    if channels is not None and scale_channels is not None:
        raise ValueError("give --channels or --scale-channels, not both")
    if pool_first and arch.nodes is None:
        raise ValueError("--pool-first needs a trellis (this architecture is a stage-1 single path)")
    changes: dict[str, Any] = {}
    if scale_channels is not None:
        changes.update(channels=int(scale_channels[0]), scale_channels=tuple(scale_channels))
    elif channels is not None:
        changes.update(channels=channels, scale_channels=None)
    for name, value in (("rsp_ratio", rsp_ratio), ("head", head), ("head_channels", head_channels),
                        ("pool_first", pool_first)):
        if value is not None:
            changes[name] = value
    search = dict(arch.search)
    search["rescaled"] = {"from": source, "changes": {k: list(v) if isinstance(v, tuple) else v
                                                      for k, v in changes.items()}}
    new = dataclasses.replace(arch, search=search, **changes)
    return Architecture.load(new.to_dict())   # the file's validation, fields named
