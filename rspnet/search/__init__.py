"""The two-stage RSPNet search (``python -m rspnet.search``).

==================  ===========================================================
``config``          ``SearchConfig``: what a search computes; its checks
``run``             ``run(config, options, stage, cell)``: a whole search, as the CLI does it
``stage``           ``StageSearch``: one stage's bi-level step and checkpoint contents
``supernet``        the stage-1 single-path and stage-2 trellis supernets
``architect``       the architecture step (first / second order) and its penalties
``cost``            the FLOPs / latency table and the expected cost of the derived network
``derive``          architecture parameters → cell genotype and kept paths
``plots``           the pictures of a search
``__main__``        the command line: flags to a config, then ``run``
==================  ===========================================================

The vocabulary a search produces (``Genotype``, ``KeptNode``, the
architecture file) lives in ``rspnet.architecture``.
"""
from .architect import ORDERS, Architect, CostPenalty, ParamPenalty
from .config import ARCH_LR, RESUMABLE_CHANGES, SearchConfig, check_config, default_memory
from .derive import derive_cell, derive_paths
from .run import STAGES, run
from .stage import StageSearch, checkpoint_series, load_search_checkpoint
from .supernet import MacroSupernet, SinglePathSupernet

__all__ = ["SearchConfig", "check_config", "ARCH_LR", "default_memory", "RESUMABLE_CHANGES", "run", "STAGES", "StageSearch",
           "checkpoint_series", "load_search_checkpoint", "Architect", "ParamPenalty", "CostPenalty", "ORDERS",
           "SinglePathSupernet", "MacroSupernet", "derive_cell", "derive_paths"]
