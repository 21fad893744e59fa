import pytest
import torch

from rspnet.models import RSPNet
from rspnet.nn import DerivedCell, RSPBlock
from rspnet.architecture import Architecture, KeptNode
from tests.helpers.architectures import CELL

NODES = (KeptNode((1, 0), (((0, 0), 1.0),)),
         KeptNode((1, 1), (((0, 0), 1.0),)),
         KeptNode((2, 0), (((1, 0), 0.7), ((1, 1), 0.3))),
         KeptNode((2, 2), (((1, 1), 1.0),)))


def small_arch(nodes=NODES):
    return Architecture(cell=CELL, channels=4, scales=4, head_channels=8, layers=2 if nodes else None,
                        nodes=nodes)


@pytest.mark.parametrize("source", ["object", "dict", "file"])
def test_from_architecture_builds_a_trainable_network(source, tmp_path):
    arch = small_arch()
    if source == "dict":
        arch = arch.to_dict()
    elif source == "file":
        arch.save(tmp_path / "a.json")
        arch = str(tmp_path / "a.json")
    model = RSPNet(arch, num_classes=7)
    x = torch.randn(2, 3, 32, 64)
    out = model(x)
    assert out.shape == (2, 7, 32, 64)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.affine for m in bns)
    out.mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_trellis_keeps_only_the_listed_paths_with_fixed_weights():
    model = RSPNet(small_arch(), 7)
    assert model.backbone.nodes == [(1, 0), (1, 1), (2, 0), (2, 2)]
    assert model.backbone.sources[2] == [(1, 0), (1, 1)]
    torch.testing.assert_close(torch.softmax(model.path_logits_2, 0), torch.tensor([0.7, 0.3]))
    # fixed by the architecture: neither trained nor stored in the weights
    assert not model.path_logits_2.requires_grad
    assert not any("path_logits" in n for n in model.state_dict())
    # the head reads the last layer's two nodes: 1/4 (4 ch) and 1/16 (16 ch)
    assert model.head.fuse[0].in_channels == 4 + 16
    blocks = [m for m in model.modules() if isinstance(m, RSPBlock)]
    cells = [m for m in model.modules() if isinstance(m, DerivedCell)]
    assert len(blocks) == len(cells) == 4


def test_single_path_topology_when_there_is_no_macro_part():
    model = RSPNet(small_arch(nodes=None), 7)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7, 32, 32)
    cells = [m for m in model.modules() if isinstance(m, DerivedCell)]
    assert [c.project[0].out_channels for c in cells] == [2, 4, 8, 16]   # half of F·2^s
    assert model.head.fuse[0].in_channels == 4 + 8 + 16 + 32
