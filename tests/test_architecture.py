import copy
import json

import pytest

from rspnet.architecture import Architecture
from tests.helpers.architectures import fixed_architecture

load_architecture = Architecture.load   # the one way to read an architecture


def test_round_trip_through_a_file(tmp_path):
    arch = fixed_architecture()
    path = tmp_path / "architecture.json"
    arch.save(path)
    data = json.loads(path.read_text())
    assert data["schema_version"] == 1
    assert data["cell"]["normal"][0] == {"op": "sep_conv_3x3", "from": 0, "to": 1}
    assert load_architecture(path) == arch
    assert Architecture.load(data) == arch
    assert not [p for p in tmp_path.iterdir() if p.name != "architecture.json"]  # no temp file left


def test_head_kind_round_trips_and_defaults_to_concat():
    light = fixed_architecture(head="light")
    data = json.loads(json.dumps(light.to_dict()))
    assert data["widths"]["head"] == "light"
    assert Architecture.load(data) == light
    # the default is not written: files of earlier versions read and write unchanged
    plain = fixed_architecture().to_dict()
    assert "head" not in plain["widths"]
    assert Architecture.load(plain).head == "concat"


def test_scale_channels_round_trip_and_build_those_widths():
    from rspnet.models import RSPNet
    arch = fixed_architecture(scale_channels=(8, 16, 24, 32))
    data = json.loads(json.dumps(arch.to_dict()))
    assert data["widths"]["scale_channels"] == [8, 16, 24, 32]
    assert Architecture.load(data) == arch and arch.widths == (8, 16, 24, 32)
    assert ("scale_channels" not in fixed_architecture().to_dict()["widths"]
            and fixed_architecture().widths == (8, 16, 32, 64))
    model = RSPNet(arch, 5)
    # every node's block and PAM run at its scale's width; the head reads the last layer's
    for (_, scale), pam in zip(model.backbone.nodes, model.backbone.pams):
        assert all(p[1].out_channels == arch.widths[scale] for p in pam.projections)
    assert model.head.fuse[0].in_channels == 8 + 16 + 24   # layer 2: scales 0, 1, 2
    import torch
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5, 64, 64)


def test_pool_first_round_trips_and_defaults_to_false():
    arch = fixed_architecture(pool_first=True)
    data = json.loads(json.dumps(arch.to_dict()))
    assert data["macro"]["pool_first"] is True and Architecture.load(data) == arch
    assert ("pool_first" not in fixed_architecture().to_dict()["macro"]
            and not Architecture.load(fixed_architecture().to_dict()).pool_first)


def test_round_trip_single_path():
    arch = fixed_architecture(layers=None, nodes=None)
    data = json.loads(json.dumps(arch.to_dict()))
    assert data["macro"] is None
    assert Architecture.load(data) == arch


def _set(path, value):
    def mutate(d):
        *parents, last = path
        for key in parents:
            d = d[key]
        if value is _DELETE:
            del d[last]
        else:
            d[last] = value
    return mutate


_DELETE = object()

MALFORMED = [
    (_set(["cell", "normal", 3, "op"], "conv_9x9"),
     "architecture file: cell.normal[3].op: 'conv_9x9' is not one of PRIMITIVES"),
    (_set(["cell", "normal", 0, "op"], "none"), "cell.normal[0].op: 'none' cannot be a kept edge"),
    (_set(["cell", "normal", 2, "to"], 5), "cell.normal[2].to: 5 is out of range [1, 4]"),
    (_set(["cell", "normal", 1, "from"], 2), "cell.normal[1].from: 2 is out of range [0, 1]"),
    (_set(["cell", "normal", 1, "from"], "0"), "cell.normal[1].from: expected an integer"),
    (_set(["cell", "normal", 2, "extra"], 1), "cell.normal[2]: unknown field 'extra'"),
    (_set(["cell", "normal", 0, "to"], 3), "cell.normal: node 1 has no incoming edge"),
    (_set(["cell", "normal", 2, "from"], 0), "cell.normal[2]: duplicate edge 0 -> 2"),
    (_set(["cell", "normal_concat"], [1, 1]), "cell.normal_concat: repeated node"),
    (_set(["cell", "steps"], _DELETE), "cell.steps: missing"),
    (_set(["schema_version"], _DELETE), "architecture file: schema_version: missing"),
    (_set(["schema_version"], 2), "schema_version: 2 is not supported"),
    (_set(["extra"], 1), "(top level): unknown field 'extra'"),
    (_set(["widths", "channels"], "8"), "widths.channels: expected an integer, got '8'"),
    (_set(["widths", "scales"], True), "widths.scales: expected an integer"),
    (_set(["widths", "head"], "aspp"), "widths.head: expected one of 'concat', 'light', 'detail', got 'aspp'"),
    (_set(["widths", "scale_channels"], [8, 16, 24]), "widths.scale_channels: needs one width per scale (4)"),
    (_set(["widths", "scale_channels"], [10, 16, 24, 32]), "the first width is the channels of scale 0 (8)"),
    (_set(["widths", "scale_channels"], [8, 16, 25, 32]), "every width must be even"),
    (_set(["widths", "scale_channels"], [8, 16, "24", 32]), "widths.scale_channels[2]: expected an integer"),
    (_set(["macro", "pool_first"], 1), "macro.pool_first: expected true or false, got 1"),
    (_set(["rsp", "ratio"], 1.5), "rsp.ratio: expected a number in (0, 1)"),
    (_set(["rsp", "depth"], 4), "rsp: at scale 0 (8 channels)"),
    (_set(["macro", "layers"], 0), "macro.layers: 0 is out of range"),
    (_set(["macro", "nodes", 2, "node"], [1, 2]), "macro.nodes[2].node[1]: 2 is out of range [0, 1]"),
    (_set(["macro", "nodes", 2, "node"], [1, 0]), "macro.nodes[2].node: node [1, 0] is listed twice"),
    (_set(["macro", "nodes", 2, "paths", 0, "from"], [0, 0]),
     "macro.nodes[2].paths[0].from: [0, 0] is not in layer 1"),
    (_set(["macro", "nodes", 2, "paths", 1, "from"], [1, 0]),
     "macro.nodes[2].paths[1].from: [1, 0] is read twice"),
    (_set(["macro", "nodes", 2, "paths", 0, "weight"], 0.5), "macro.nodes[2].paths: weights sum to 0.875"),
    (_set(["macro", "nodes", 2, "paths", 0, "weight"], -1.0),
     "macro.nodes[2].paths[0].weight: expected a positive number"),
    (_set(["macro", "nodes", 4, "paths", 0, "from"], [1, 3]),
     "macro.nodes[4].paths[0].from: [1, 3] is not a node of this network"),
    (_set(["macro", "layers"], 3), "macro.nodes: no node in the last layer (3)"),
    (_set(["macro", "nodes", 1, "paths"], []), "macro.nodes[1].paths: must not be empty"),
]


@pytest.mark.parametrize("mutate, message", MALFORMED, ids=[m for _, m in MALFORMED])
def test_malformed_files_name_the_bad_field(mutate, message):
    data = copy.deepcopy(fixed_architecture().to_dict())
    mutate(data)
    with pytest.raises(ValueError) as info:
        Architecture.load(data)
    assert message in str(info.value)
    assert str(info.value).startswith("architecture file: ")


def test_unreachable_node_is_rejected():
    data = fixed_architecture().to_dict()
    data["macro"]["layers"] = 3
    data["macro"]["nodes"].append({"node": [3, 0], "paths": [{"from": [2, 0], "weight": 1.0}]})
    with pytest.raises(ValueError, match=r"macro.nodes\[3\]: node \[2, 1\] does not reach the head"):
        Architecture.load(data)


def test_not_json_and_not_an_object(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{ nope")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_architecture(bad)
    with pytest.raises(ValueError, match=r"\(top level\): expected an object"):
        Architecture.load([1, 2])
