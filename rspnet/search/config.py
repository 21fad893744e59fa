"""``SearchConfig``: every setting that decides what a search computes (stored
in its checkpoints; a resumed search must use the same, except
``RESUMABLE_CHANGES``), and their checks. How the run is driven is
``rspnet.engine.RunOptions``."""
from __future__ import annotations

from dataclasses import dataclass

from rspnet.architecture import CANDIDATE_SETS, HEAD_KINDS, partial_channels, scale_widths

from .architect import ORDERS

__all__ = ["SearchConfig", "RESUMABLE_CHANGES", "check_config", "ARCH_LR", "default_memory",
           "SYNTHETIC_SEARCH_IMAGES"]

# The synthetic images of a default search (split in halves A / B). With 64
# and 10 epochs per stage (40 architecture steps on 32 images), three search
# seeds were level with random architectures; with 224 and 6 epochs (84
# architecture steps on 112 images, about the same time) all three beat the
# best of six random ones (docs/design.md §13, benchmarks/RESULTS.md).
SYNTHETIC_SEARCH_IMAGES = 224

# The architecture learning rate of the defaults: with DARTS's 3e-4, the 40
# architecture steps of a default stage move α by at most about 0.012 and the
# derived architecture is decided by the initialisation noise
# (docs/design.md, "Does the search select?").
ARCH_LR = 0.03


def default_memory(device: str) -> str:
    """``recompute`` on accelerators, where memory limits the search;
    ``store`` on CPU, where recomputation roughly doubles a step and memory
    is plentiful."""
    return "store" if device.split(":")[0] == "cpu" else "recompute"


@dataclass
class SearchConfig:
    """Every setting of a search; the defaults are the CLI's (see docs/design.md)."""
    data: str = "synthetic"
    data_root: str | None = None
    images: int | None = None          # training images used; None: all (synthetic: SYNTHETIC_SEARCH_IMAGES)
    size: tuple[int, int] = (64, 128)
    epochs: int = 6                    # per stage
    warmup: int | None = None          # epochs before architecture updates; None: epochs // 2
    batch_size: int = 4
    channels: int = 16                 # F
    scales: int = 4
    layers: int = 8                    # trellis depth L of stage 2
    steps: int = 4                     # intermediate nodes of a cell
    memory: str = "store"             # the CLI: store on CPU, recompute on CUDA
    order: str = "first"
    seed: int = 0
    device: str = "cpu"
    edge_partial: int = 1
    edge_normalization: bool = False
    skip_bn: bool = True               # affine-free BN after the skip_connect candidate (MixedOp)
    path_norm: bool = False            # stage 2: every path at unit RMS after resampling (PathAttention)
    candidates: str = "darts"          # the cell's candidate set: architecture.CANDIDATE_SETS
    rsp_ratio: float = 0.5
    rsp_depth: int = 1
    head_channels: int | None = None   # None: 4 F
    head: str = "concat"                # rspnet.nn.HEADS
    scale_channels: tuple[int, ...] | None = None  # channels per scale; None: channels * 2**s
    pool_first: bool = False           # stage 2: pool paths into coarser nodes before projecting (PathAttention)
    top_k: int = 2
    same_scale_paths: bool = False     # every node keeps its own scale's path (derive.derive_paths)
    max_skip: int | None = None        # P-DARTS: skip_connect edges kept in the derived cell; None: any
    param_penalty: float = 0.0
    param_budget: float | None = None  # parameters
    # cost-aware search (docs/design.md §6): λ · max(0, E[cost] - budget) / budget
    flops_budget: float | None = None  # FLOPs of the derived network at `size`
    latency_budget: float | None = None  # ms of the derived network at `latency_size` on `device` (CPU: 1 thread)
    cost_weight: float = 1.0           # λ of both cost penalties
    latency_size: tuple[int, int] = (512, 1024)
    latency_table: str | None = None   # the latency table's JSON file; None: rspnet.search.cost's default
    w_lr: float = 0.025
    w_lr_min: float = 0.001
    w_momentum: float = 0.9
    w_weight_decay: float = 3e-4
    grad_clip: float = 5.0
    # Adam of the architecture parameters: α in stage 1, β in stage 2
    arch_lr: float = ARCH_LR
    arch_betas: tuple[float, float] = (0.5, 0.999)
    arch_weight_decay: float = 1e-3

    @property
    def warmup_epochs(self) -> int:
        return self.epochs // 2 if self.warmup is None else self.warmup

    @property
    def primitives(self) -> tuple[str, ...]:
        return CANDIDATE_SETS[self.candidates]

    @property
    def head_width(self) -> int:
        return 4 * self.channels if self.head_channels is None else self.head_channels


# Settings that may change between a run and its resumption without changing
# what is computed (beyond floating-point rounding).
RESUMABLE_CHANGES = ("device", "memory", "latency_table")


def check_config(c: SearchConfig) -> None:
    """``ValueError`` (naming the CLI flag) for settings that cannot search."""
    from rspnet.data import check_source
    from rspnet.engine.config import check_run_settings
    from rspnet.nn import MEMORY_MODES

    check_source(c.data, c.data_root, ("train",))
    check_run_settings(c.device, c.batch_size, c.size)
    if c.warmup is not None and not 0 <= c.warmup <= c.epochs:
        raise ValueError(f"--warmup must be in [0, --epochs={c.epochs}], got {c.warmup}")
    if not 0 < c.rsp_ratio < 1:
        raise ValueError(f"--rsp-ratio must be in (0, 1), got {c.rsp_ratio}")
    try:
        widths = scale_widths(c.channels, c.scales, c.scale_channels)
    except ValueError as exc:
        raise ValueError(f"--scale-channels: {exc}") from None
    for width in widths:
        channels = width
        try:
            for _ in range(c.rsp_depth):
                channels = partial_channels(channels, c.rsp_ratio)
        except ValueError as exc:
            what = f"--channels {c.channels}" if c.scale_channels is None else f"--scale-channels width {width}"
            raise ValueError(f"{what} with --rsp-ratio/--rsp-depth: {exc}") from None
        if channels % c.edge_partial:
            raise ValueError(f"--edge-partial {c.edge_partial} must divide the cell's {channels} channels "
                             f"at every scale")
    if c.param_penalty < 0 or (c.param_budget is not None and c.param_budget <= 0):
        raise ValueError("--param-penalty must be >= 0 and --param-budget > 0")
    if c.param_budget is not None and not c.param_penalty:
        raise ValueError("--param-budget needs --param-penalty > 0 (the budget only shapes the penalty)")
    if c.cost_weight < 0 or any(b is not None and not b > 0 for b in (c.flops_budget, c.latency_budget)):
        raise ValueError("--cost-weight must be >= 0 and --flops-budget / --latency-budget > 0")
    if (c.flops_budget is not None or c.latency_budget is not None) and not c.cost_weight:
        raise ValueError("--flops-budget / --latency-budget need --cost-weight > 0")
    if min(c.latency_size) <= 0 or c.latency_size[0] % 32 or c.latency_size[1] % 32:
        raise ValueError(f"--latency-size must be HxW, multiples of 32, got {c.latency_size}")
    if c.max_skip is not None and c.max_skip < 0:
        raise ValueError(f"--max-skip must be >= 0, got {c.max_skip}")
    if c.head not in HEAD_KINDS:
        raise ValueError(f"--head must be one of {', '.join(HEAD_KINDS)}, got {c.head!r}")
    if c.candidates not in CANDIDATE_SETS:
        raise ValueError(f"--candidates must be one of {', '.join(CANDIDATE_SETS)}, got {c.candidates!r}")
    if c.memory not in MEMORY_MODES or c.order not in ORDERS:
        raise ValueError(f"--memory must be one of {MEMORY_MODES} and --order one of {ORDERS}")
    if not c.arch_lr > 0 or not all(0 <= b < 1 for b in c.arch_betas) or c.arch_weight_decay < 0:
        raise ValueError("need --arch-lr > 0, 0 <= --arch-betas < 1 and --arch-weight-decay >= 0")
    if min(c.epochs, c.channels, c.scales, c.layers, c.steps, c.edge_partial, c.rsp_depth, c.top_k) < 1:
        raise ValueError("--epochs, --channels, --layers, --steps, --edge-partial, --rsp-depth and "
                         "--top-k must be positive")
    if c.latency_budget is not None and c.latency_table:
        from rspnet.files import check_output_file
        check_output_file(c.latency_table, "--latency-table")   # the cache is (re)written there
