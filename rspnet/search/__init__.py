"""The two-stage RSPNet search: supernets, the Architect, derivation and the
architecture file. ``python -m rspnet.search`` runs it."""
from rspnet.nn import Genotype

from .architect import Architect, ParamPenalty
from .architecture import SCHEMA_VERSION, Architecture, load_architecture
from .derive import KeptNode, derive_cell, derive_paths, reaching_head
from .searcher import SearchConfig, StageSearch
from .supernet import MacroSupernet, SinglePathSupernet

__all__ = ["Genotype", "KeptNode", "Architect", "ParamPenalty", "Architecture", "load_architecture",
           "SCHEMA_VERSION", "derive_cell", "derive_paths", "reaching_head", "SearchConfig",
           "StageSearch", "SinglePathSupernet", "MacroSupernet"]
