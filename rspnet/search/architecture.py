"""The architecture file: everything needed to build a derived RSPNet.

One JSON document (``architecture.json``), validated on load; every error
names the offending field, e.g. ``cell.normal[3].op``::

    {
      "schema_version": 1,
      "cell":   {"steps": 4, "normal": [{"op": "sep_conv_3x3", "from": 0, "to": 1}, ...],
                 "normal_concat": [1, 2, 3, 4]},
      "widths": {"channels": 16, "scales": 4, "head_channels": 64},
      "rsp":    {"ratio": 0.5, "depth": 1},
      "macro":  {"layers": 8,
                 "nodes": [{"node": [1, 0], "paths": [{"from": [0, 0], "weight": 1.0}]}, ...]},
      "search": {...}
    }

``macro`` is ``null`` after a stage-1-only search: the network is then the
stage-1 single-path topology with the derived cell at every scale. Trellis
nodes are ``[layer, scale]``, the stem being ``[0, 0]``; a node reads nodes of
the previous layer only, and the head reads every node of the last layer.
``search`` is free-form provenance (settings, seed) and is not interpreted.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from rspnet.nn import PRIMITIVES, Genotype, partial_channels

from rspnet.checkpoint import atomic_open
from .derive import KeptNode, reaching_head

SCHEMA_VERSION = 1
_WEIGHT_SUM_TOLERANCE = 1e-6  # for hand-edited files; files we write sum to 1 within 1e-15


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

    @property
    def steps(self) -> int:
        return max(target for _, _, target in self.cell.normal)

    def to_dict(self) -> dict[str, Any]:
        macro = None
        if self.nodes is not None:
            macro = {"layers": self.layers,
                     "nodes": [{"node": list(n.node),
                                "paths": [{"from": list(src), "weight": w} for src, w in n.paths]}
                               for n in self.nodes]}
        return {
            "schema_version": SCHEMA_VERSION,
            "cell": {"steps": self.steps,
                     "normal": [{"op": op, "from": s, "to": t} for op, s, t in self.cell.normal],
                     "normal_concat": list(self.cell.normal_concat)},
            "widths": {"channels": self.channels, "scales": self.scales,
                       "head_channels": self.head_channels},
            "rsp": {"ratio": self.rsp_ratio, "depth": self.rsp_depth},
            "macro": macro,
            "search": self.search,
        }

    def save(self, path: str | os.PathLike) -> None:
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        with atomic_open(path) as f:
            f.write(text.encode())

    @classmethod
    def from_dict(cls, data: Any) -> Architecture:
        return _parse(data)

    @classmethod
    def load(cls, path_or_dict: str | os.PathLike | Mapping | Architecture) -> Architecture:
        """From a file path, an already parsed dict, or an ``Architecture``."""
        if isinstance(path_or_dict, Architecture):
            return path_or_dict
        if isinstance(path_or_dict, Mapping):
            return _parse(path_or_dict)
        with open(path_or_dict) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as exc:
                raise ValueError(f"architecture file {os.fspath(path_or_dict)!r}: not valid JSON: {exc}") from None
        return _parse(data)


load_architecture = Architecture.load


# ------------------------------------------------------------------ validation
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
        if op not in PRIMITIVES:
            _fail(f"{where}.op", f"{op!r} is not one of PRIMITIVES")
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


def _parse_macro(data: Any, scales: int) -> tuple[int, tuple[KeptNode, ...]]:
    macro = _object(data, "macro", ("layers", "nodes"))
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
    return layers, tuple(nodes)


def _parse(data: Any) -> Architecture:
    root = _object(data, "(top level)",
                   ("schema_version", "cell", "widths", "rsp", "macro"), optional=("search",))
    version = root["schema_version"]
    if version != SCHEMA_VERSION or isinstance(version, bool):
        _fail("schema_version", f"{version!r} is not supported (this rspnet reads {SCHEMA_VERSION})")
    cell = _parse_cell(root["cell"])
    widths = _object(root["widths"], "widths", ("channels", "scales", "head_channels"))
    channels = _int(widths["channels"], "widths.channels", 2)
    scales = _int(widths["scales"], "widths.scales", 1)
    head_channels = _int(widths["head_channels"], "widths.head_channels", 1)
    rsp = _object(root["rsp"], "rsp", ("ratio", "depth"))
    ratio = rsp["ratio"]
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < 1:
        _fail("rsp.ratio", f"expected a number in (0, 1), got {ratio!r}")
    depth = _int(rsp["depth"], "rsp.depth", 1)
    for scale in range(scales):
        c = channels * 2 ** scale
        try:
            for _ in range(depth):
                c = partial_channels(c, ratio)
        except ValueError as exc:
            _fail("rsp", f"at scale {scale} ({channels * 2 ** scale} channels): {exc}")
    layers, nodes = (None, None) if root["macro"] is None else _parse_macro(root["macro"], scales)
    search = root.get("search", {})
    if not isinstance(search, Mapping):
        _fail("search", f"expected an object, got {type(search).__name__}")
    return Architecture(cell=cell, channels=channels, scales=scales, head_channels=head_channels,
                        rsp_ratio=float(ratio), rsp_depth=depth, layers=layers, nodes=nodes,
                        search=dict(search))
