"""Architectures for the tests to build, train and compare.

``make_architecture(seed)`` is derived by the search package's own supernets
and derivation (what a real search writes to ``architecture.json``);
``fixed_architecture(**fields)`` is written by hand, the same every time."""
import torch

from rspnet import data
from rspnet.architecture import Architecture, KeptNode
from rspnet.nn import Genotype
from rspnet.search import MacroSupernet, SinglePathSupernet

CHANNELS, LAYERS = 8, 2


def make_architecture(seed: int = 0) -> dict:
    """A derived architecture from the search package's own supernets and
    derivation: random architecture weights (seeded), cheap to build, the
    same code path as a real search's ``architecture.json``."""
    torch.manual_seed(seed)
    stage1 = SinglePathSupernet(data.NUM_CLASSES, channels=CHANNELS, scales=4, steps=4)
    with torch.no_grad():
        for p in stage1.arch_parameters():
            p.normal_()
    cell = stage1.genotype()
    stage2 = MacroSupernet(data.NUM_CLASSES, cell, CHANNELS, 4, LAYERS, 0.5, 1, 2 * CHANNELS)
    with torch.no_grad():
        for p in stage2.arch_parameters():
            p.normal_()
    nodes = stage2.paths(2)
    return Architecture(cell=cell, channels=CHANNELS, scales=4, head_channels=2 * CHANNELS,
                        layers=LAYERS, nodes=nodes, search={"test_seed": seed}).to_dict()


def architecture_fingerprint(architecture):
    return Architecture.load(architecture).fingerprint()


CELL = Genotype(normal=(("sep_conv_3x3", 0, 1), ("skip_connect", 0, 2), ("dil_conv_3x3", 1, 2),
                        ("max_pool_3x3", 1, 3), ("sep_conv_5x5", 2, 3),
                        ("avg_pool_3x3", 0, 4), ("dil_conv_5x5", 3, 4)),
                normal_concat=(1, 2, 3, 4))
NODES = (KeptNode((1, 0), (((0, 0), 1.0),)),
         KeptNode((1, 1), (((0, 0), 1.0),)),
         KeptNode((2, 0), (((1, 0), 0.625), ((1, 1), 0.375))),
         KeptNode((2, 1), (((1, 0), 0.5), ((1, 1), 0.5))),
         KeptNode((2, 2), (((1, 1), 1.0),)))


def fixed_architecture(**kw) -> Architecture:
    """The hand-written ``CELL`` and ``NODES`` at small widths; ``kw``
    overrides any field."""
    fields = dict(cell=CELL, channels=8, scales=4, head_channels=32, rsp_ratio=0.5, rsp_depth=1,
                  layers=2, nodes=NODES, search={"seed": 3})
    fields.update(kw)
    return Architecture(**fields)
