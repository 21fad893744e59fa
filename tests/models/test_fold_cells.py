"""rspnet.models.simplify: a derived cell with its linear (skip_connect)
states merged into the projection gives the eval-mode cell's outputs (fp32
rounding), runs only the edges the output needs, and an all-skip cell is one
C→C convolution; the unfolded eval-mode cell or network is the reference."""
import dataclasses
import random

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from rspnet.architecture import Architecture, Genotype, KeptNode
from rspnet.models import FoldedCell, RSPNet, count_flops, fold_cells, inference_form
from rspnet.models.inference import InferenceTrellis
from rspnet.models.simplify import AvgPool3x3, MaxPool3x3
from rspnet.nn import DerivedCell, TrellisBackbone

from .test_fold import randomise_bn
from .test_rspnet import NODES

ALL = (1, 2, 3, 4)
# name: (edges, concat, edges still run after folding)
CELLS = {
    # the cell of a searched network (every edge a skip): 1 = x, 2 = 2x, 3 = 3x, 4 = 3x
    "all-skip": ((("skip_connect", 0, 1), ("skip_connect", 0, 2), ("skip_connect", 1, 2),
                  ("skip_connect", 1, 3), ("skip_connect", 2, 3), ("skip_connect", 1, 4),
                  ("skip_connect", 2, 4)), ALL, 0),
    # nodes 1-3 linear (x, 2x, 3x), node 4 reads two of them through convolutions
    "partly-skip": ((("skip_connect", 0, 1), ("skip_connect", 0, 2), ("skip_connect", 1, 2),
                     ("skip_connect", 1, 3), ("skip_connect", 2, 3), ("dil_conv_3x3", 1, 4),
                     ("dil_conv_3x3", 3, 4)), ALL, 2),
    # a skip edge out of a non-linear node (2 = 1), mixed with a linear one (3 = x + 2)
    "skip-of-non-linear": ((("sep_conv_3x3", 0, 1), ("skip_connect", 1, 2), ("skip_connect", 0, 3),
                            ("skip_connect", 2, 3), ("max_pool_3x3", 2, 4), ("skip_connect", 3, 4)),
                           ALL, 6),
    # an op reading a linear state whose coefficient is not 1 (3 = conv(2x))
    "op-on-scaled-state": ((("skip_connect", 0, 1), ("skip_connect", 0, 2), ("skip_connect", 1, 2),
                            ("mbconv_3x3_e3", 2, 3), ("skip_connect", 2, 4), ("avg_pool_3x3", 3, 4)),
                           ALL, 3),
    # only 3 and 4 concatenated: the non-linear node 1 feeds nothing and is not run
    "dead-node": ((("sep_conv_5x5", 0, 1), ("skip_connect", 0, 2), ("skip_connect", 0, 3),
                   ("skip_connect", 2, 3), ("skip_connect", 2, 4), ("avg_pool_3x3", 3, 4)), (3, 4), 2),
    "no-skip": ((("sep_conv_3x3", 0, 1), ("max_pool_3x3", 0, 2), ("dil_conv_5x5", 1, 2),
                 ("avg_pool_3x3", 1, 3), ("sep_conv_3x3", 2, 3), ("dil_conv_3x3", 0, 4),
                 ("max_pool_3x3", 3, 4)), ALL, 7),
}
OPS = ("max_pool_3x3", "avg_pool_3x3", "sep_conv_3x3", "dil_conv_3x3", "mbconv_3x3_e3")


def _random_genotype(rng: random.Random) -> Genotype:
    """Two edges into each node (one into node 1), 70 % of them skip_connect
    (as searched cells tend to be), the others one of ``OPS``."""
    normal = [("skip_connect" if rng.random() < 0.7 else rng.choice(OPS), s, t)
              for t in range(1, 5) for s in sorted(rng.sample(range(t), min(2, t)))]
    return Genotype(normal=tuple(normal), normal_concat=ALL)


def _genotypes():
    for name, (normal, concat, _) in CELLS.items():
        yield name, Genotype(normal=normal, normal_concat=concat)
    rng = random.Random(0)
    for i in range(8):
        yield f"random-{i}", _random_genotype(rng)


def _eval_cell(genotype: Genotype, affine: bool = True, C: int = 6) -> DerivedCell:
    torch.manual_seed(0)
    return randomise_bn(DerivedCell(C, genotype, affine=affine)).eval()


def assert_same(got: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal to ~1e-5 of the output's scale (fp32 rounding)."""
    scale = float(expected.abs().max())
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("name, genotype", list(_genotypes()), ids=[n for n, _ in _genotypes()])
def test_folded_cell_gives_the_eval_outputs(name, genotype, affine):
    cell = _eval_cell(genotype, affine)
    folded = inference_form(cell)
    assert isinstance(folded, FoldedCell) and isinstance(cell, DerivedCell)   # a copy
    x = torch.randn(2, 6, 11, 13)
    with torch.no_grad():
        assert_same(folded(x), cell(x))
    # which edges still run: the non-skip ops of the nodes the output needs
    kept = sum(len(edges) for _, edges in folded.plan)
    assert kept + folded.dropped_edges == len(genotype.normal)
    assert folded.inference_report.cells_merged == int(folded.dropped_edges > 0)
    if name in CELLS:
        assert kept == CELLS[name][2]
    skips = sum(op == "skip_connect" for op, _, _ in genotype.normal)
    assert len(folded.ops) <= len(genotype.normal) - skips


@pytest.mark.parametrize("name", ["partly-skip", "dead-node"])
def test_cells_fold_without_batchnorm_folding(name):
    """The merge reads only the projection's convolution: with its BatchNorm
    still behind it the outputs are the same, and the original is untouched."""
    normal, concat, _ = CELLS[name]
    cell = _eval_cell(Genotype(normal=normal, normal_concat=concat))
    weight = cell.project[0].weight.clone()
    folded, simplified = fold_cells(cell)
    assert simplified == 1 and isinstance(folded.project[1], nn.BatchNorm2d)
    x = torch.randn(2, 6, 9, 7)
    with torch.no_grad():
        assert_same(folded(x), cell(x))
    assert isinstance(cell, DerivedCell) and torch.equal(cell.project[0].weight, weight)


def test_all_skip_cell_is_one_conv_of_the_merged_weight():
    normal, concat, _ = CELLS["all-skip"]
    C = 6
    cell = _eval_cell(Genotype(normal=normal, normal_concat=concat), C=C)
    folded = inference_form(cell)
    convs = [m for m in folded.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 and convs[0].weight.shape == (C, C, 1, 1) and len(folded.ops) == 0
    assert folded.plan == () and folded.dropped_edges == len(normal)
    # x's weight: the BN-folded projection's blocks times 1, 2, 3, 3 (nodes x, 2x, 3x, 3x)
    projection = inference_form(cell, batchnorm_only=True).project[0]
    blocks = projection.weight.double().split(C, dim=1)
    expected = sum(c * w for c, w in zip((1, 2, 3, 3), blocks))
    torch.testing.assert_close(convs[0].weight.double(), expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(convs[0].bias, projection.bias)


def cell_architecture(cell: str) -> Architecture:
    normal, concat, _ = CELLS[cell]
    return Architecture(cell=Genotype(normal=normal, normal_concat=concat), channels=4, scales=4,
                        head_channels=8, layers=2, nodes=NODES)


@pytest.mark.parametrize("cell", ["all-skip", "partly-skip"])
def test_folded_network_with_linear_cells_gives_the_eval_outputs(cell):
    torch.manual_seed(0)
    model = randomise_bn(RSPNet(cell_architecture(cell), num_classes=5)).eval()
    cells = sum(isinstance(m, DerivedCell) for m in model.modules())
    folded = inference_form(model)
    assert folded.inference_report.cells_merged == cells > 0
    assert not any(isinstance(m, DerivedCell) for m in folded.modules())
    assert sum(isinstance(m, FoldedCell) for m in folded.modules()) == cells
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        assert_same(folded(x), model(x))
    assert count_flops(folded, (64, 128)) < count_flops(model, (64, 128))


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (7, 5), (16, 32)])
def test_inference_max_pool_equals_max_pool2d(size):
    """The separable 3×3 max of the inference form against ``F.max_pool2d``,
    element for element, ties (ReLU zeros) and negative values included."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, *size)
    for inp in (x, torch.relu(x), -x.abs()):
        torch.testing.assert_close(MaxPool3x3()(inp), F.max_pool2d(inp, 3, 1, 1), rtol=0, atol=0)


@pytest.mark.parametrize("size", [(1, 1), (1, 4), (2, 3), (7, 5), (16, 32)])
def test_inference_avg_pool_equals_avg_pool2d_without_the_padding(size):
    """The separable 3×3 mean of the inference form against
    ``F.avg_pool2d(count_include_pad=False)``: float64 to rounding, float32
    and channels-last inputs to fp32 rounding."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    torch.testing.assert_close(AvgPool3x3()(x), F.avg_pool2d(x, 3, 1, 1, count_include_pad=False),
                               rtol=1e-12, atol=1e-12)
    x = x.float().contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(AvgPool3x3()(x), F.avg_pool2d(x, 3, 1, 1, count_include_pad=False))


def test_folded_cells_run_the_inference_pools():
    genotype = Genotype(normal=(("avg_pool_3x3", 0, 1), ("max_pool_3x3", 0, 2), ("avg_pool_3x3", 1, 2)),
                        normal_concat=(1, 2))
    cell = DerivedCell(4, genotype).eval()
    folded = inference_form(cell)
    assert [type(op).__name__ for op in folded.ops] == ["AvgPool3x3", "MaxPool3x3", "AvgPool3x3"]
    assert folded.inference_report.avg_pools_separable == 2 and folded.inference_report.max_pools_separable == 1
    x = torch.randn(2, 4, 9, 11)
    torch.testing.assert_close(folded(x), cell(x))


def test_folded_cells_run_the_inference_max_pool():
    genotype = Genotype(normal=(("max_pool_3x3", 0, 1), ("skip_connect", 0, 2), ("max_pool_3x3", 1, 2)),
                        normal_concat=(1, 2))
    cell = DerivedCell(4, genotype).eval()
    folded = inference_form(cell)
    assert [type(op).__name__ for op in folded.ops] == ["MaxPool3x3", "MaxPool3x3"]
    x = torch.randn(2, 4, 9, 11)
    torch.testing.assert_close(folded(x), cell(x))


@pytest.mark.parametrize("head, pool_first", [("concat", False), ("light", True)])
def test_folded_network_shares_the_path_relus(head, pool_first):
    """Three layers, so that middle nodes are read by several paths: the
    folded trellis rectifies non-final node outputs once and its path
    projections start without a ReLU; the outputs are the eval network's."""
    nodes = NODES + (KeptNode((3, 0), (((2, 0), 0.6), ((2, 2), 0.4))),
                     KeptNode((3, 1), (((2, 0), 0.5), ((2, 2), 0.5))))
    arch = dataclasses.replace(cell_architecture("partly-skip"), layers=3, nodes=nodes, head=head,
                               pool_first=pool_first)
    torch.manual_seed(0)
    model = randomise_bn(RSPNet(arch, num_classes=5)).eval()
    folded = inference_form(model)
    assert isinstance(folded.backbone, InferenceTrellis) and isinstance(model.backbone, TrellisBackbone)
    assert not any(isinstance(m, nn.ReLU) for pam in folded.backbone.pams for m in pam.modules())
    paths = sum(len(pam.projections) for pam in model.backbone.pams)
    assert folded.inference_report.relus_shared == paths == sum(len(p.projections) for p in folded.backbone.pams)
    assert all(isinstance(p[0], nn.ReLU) for pam in model.backbone.pams for p in pam.projections)
    x = torch.randn(2, 3, 64, 128)
    with torch.no_grad():
        assert_same(folded(x), model(x))
