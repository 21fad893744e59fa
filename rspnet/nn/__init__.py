"""Building blocks of RSPNet's search space (SPEC §2–§4, §7)."""
from .backbone import STEM, SinglePathBackbone, Stem, TrellisBackbone, layer_nodes, trellis_nodes
from .cell import Cell, DerivedCell, Genotype, edge_list, edge_normalization
from .head import Head
from .mixed_op import MixedOp
from .pam import PathAttention
from .primitives import OPS, PRIMITIVES, ConvBNReLU, DilConv, ReLUConvBN, SepConv, Zero
from .recompute import MEMORY_MODES, Recomputable, set_memory_mode, upsampled_cross_entropy
from .rsp import RSPBlock, partial_channels

__all__ = [
    "PRIMITIVES", "OPS", "Zero", "SepConv", "DilConv", "ConvBNReLU", "ReLUConvBN",
    "MixedOp", "MEMORY_MODES", "set_memory_mode", "Recomputable", "upsampled_cross_entropy",
    "Cell", "DerivedCell", "Genotype", "edge_list", "edge_normalization",
    "RSPBlock", "partial_channels", "PathAttention", "Head",
    "Stem", "SinglePathBackbone", "TrellisBackbone", "trellis_nodes", "layer_nodes", "STEM",
]
