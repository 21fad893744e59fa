"""The run engine that the search and the training share: a resumable,
fault-tolerant, data-parallel epoch loop and what it stands on.

========================  =====================================================
``engine.loop``           ``ResumableLoop``: position, checkpoints, stop and NaN handling
``engine.session``        ``RunSession``: process set-up, rank-0 log, start-up checks
``engine.config``         ``RunOptions`` (out, resume, checkpoints, threads, ...)
``engine.checkpoint``     verified checkpoint files and numbered series
``engine.faults``         ``Diverged``, ``StopRequested``, ``StopSignal``
``engine.seeding``        seeds and every random generator's state
``engine.sampler``        ``ShardSampler``: per-rank, resumable data order
``engine.distributed``    the process group and its collectives (torchrun)
========================  =====================================================

Nothing here knows what a supernet, a cell or a data set is.
"""
from .checkpoint import CheckpointError, CheckpointSeries, load_checkpoint, save_checkpoint
from .config import RunOptions, changed_settings, plain
from .faults import Diverged, NonFiniteError, StopRequested, StopSignal, first_nonfinite
from .loop import ResumableLoop
from .sampler import ShardSampler
from .seeding import rank_seed, rng_state, seed_everything, set_rng_state
from .session import RunError, RunSession, exit_status

__all__ = ["CheckpointError", "CheckpointSeries", "load_checkpoint", "save_checkpoint", "RunOptions",
           "changed_settings", "plain", "Diverged", "NonFiniteError", "StopRequested", "StopSignal",
           "first_nonfinite", "ResumableLoop", "ShardSampler", "rank_seed", "rng_state", "seed_everything",
           "set_rng_state", "RunError", "RunSession", "exit_status"]
