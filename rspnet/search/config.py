"""``SearchConfig``: every setting that decides what a search computes (stored
in its checkpoints and its ``summary.json``; a resumed search must use the
same, except the ``resumable`` ones), each declared once with its flag
(``rspnet.engine.settings``), and their checks. How the run is driven is
``rspnet.engine.RunOptions``."""
from __future__ import annotations

from dataclasses import dataclass

from rspnet import data
from rspnet.data import CLASS_WEIGHTS, CLASS_WEIGHTS_HELP
from rspnet.architecture import CANDIDATE_SETS, HEAD_KINDS, partial_channels, scale_widths
from rspnet.cli import (channel_list, data_root_help, nonnegative_int, parse_size, positive_float, positive_int,
                        seed_int)
from rspnet.engine.settings import resumable_changes, setting
from rspnet.nn import MEMORY_MODES

from .architect import ORDERS

__all__ = ["SearchConfig", "SearchSpace", "RESUMABLE_CHANGES", "check_config", "ARCH_LR", "default_memory",
           "SYNTHETIC_SEARCH_IMAGES"]

# The synthetic images of a default search, split in halves A / B: enough
# architecture steps for α to leave its initialisation (docs/design.md §13).
SYNTHETIC_SEARCH_IMAGES = data.SYNTHETIC_IMAGES["search"]

# The architecture learning rate of the defaults: DARTS's 3e-4 barely moves α
# in the few architecture steps of a default stage (docs/design.md, "Does the
# search select?").
ARCH_LR = 0.03


def default_memory(device: str) -> str:
    """``recompute`` on accelerators, where memory limits the search;
    ``store`` on CPU, where recomputation roughly doubles a step and memory
    is plentiful."""
    return "store" if device.split(":")[0] == "cpu" else "recompute"


# On real images (every data set but the synthetic scenes) the space defaults to
# what trained best on CamVid (docs/design.md §17): a 4-layer trellis at F = 24
# with the light head of 32 channels; the synthetic smoke test keeps the
# 8-layer F = 16 space with the concat head.
REAL_IMAGE_SPACE = {"channels": 24, "layers": 4, "head": "detail", "head_channels": 32}


def _real_images(values) -> bool:
    return values["data"] != "synthetic"


def _space_default(name: str):
    def default(values):
        return REAL_IMAGE_SPACE[name] if _real_images(values) else SearchConfig.__dataclass_fields__[name].default
    return default


def _machine_device(values) -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class SearchSpace:
    """The typed slice of a ``SearchConfig`` that shapes the networks of the
    space: what the supernets, the cost tables, the random baseline and the
    derived architecture are built from (``SearchConfig.space``)."""
    channels: int
    scales: int
    layers: int
    steps: int
    rsp_ratio: float
    rsp_depth: int
    head_width: int
    head: str
    scale_channels: tuple[int, ...] | None
    pool_first: bool
    top_k: int
    same_scale_paths: bool
    primitives: tuple[str, ...]
    max_skip: int | None
    skip_bn: bool
    path_norm: bool
    edge_partial: int
    edge_normalization: bool

    def architecture(self, cell, nodes=None, search: dict | None = None):
        """The architecture of ``cell`` (and, for a trellis, its kept
        ``nodes``) in this space; ``search`` is kept as its provenance."""
        from rspnet.architecture import Architecture

        return Architecture(cell=cell, channels=self.channels, scales=self.scales, head_channels=self.head_width,
                            head=self.head, scale_channels=self.scale_channels, rsp_ratio=self.rsp_ratio,
                            rsp_depth=self.rsp_depth, layers=self.layers if nodes else None,
                            pool_first=bool(nodes) and self.pool_first, nodes=nodes, search=dict(search or {}))


@dataclass
class SearchConfig:
    """Every setting of a search; the defaults are the CLI's (see docs/design.md)."""
    data: str = setting("synthetic", "the data set", group="data", choices=data.DATASETS)
    data_root: str | None = setting(None, data_root_help(), group="data")
    images: int | None = setting(None, "training images to use, split in halves A/B (none: all; synthetic: "
                                 f"{SYNTHETIC_SEARCH_IMAGES})", group="data", type=positive_int)
    size: tuple[int, int] = setting((64, 128), "HxW, multiples of 32 (default: 96x128 for camvid, its 3:4 "
                                    "frames; 64x128 otherwise)", group="data", type=parse_size,
                                    cli_default=lambda values: (96, 128) if values["data"] == "camvid" else (64, 128))
    epochs: int = setting(6, "epochs per stage", group="schedule", type=positive_int)
    warmup: int | None = setting(None, "epochs of weight training before architecture updates (none: "
                                 "epochs // 2)", group="schedule", type=nonnegative_int)
    batch_size: int = setting(4, "the global batch", group="schedule", type=positive_int)
    class_weights: str = setting("none", "weigh the supernet's loss per class (both steps), computed once from "
                                 f"the search's images: {CLASS_WEIGHTS_HELP}", group="schedule",
                                 choices=CLASS_WEIGHTS)
    channels: int = setting(16, "F: channels at 1/4 scale, doubling per scale (default: 24 on real images, "
                            "16 on the synthetic scenes)", group="space", type=positive_int,
                            cli_default=_space_default("channels"))
    scales: int = setting(4, "scales of the trellis, 1/4 to 1/(2^(scales+1))", group="space", type=positive_int)
    layers: int = setting(8, "trellis depth of stage 2 (default: 4 on real images, 8 on the synthetic scenes)",
                          group="space", type=positive_int, cli_default=_space_default("layers"))
    steps: int = setting(4, "intermediate nodes per cell", group="space", type=positive_int)
    memory: str = setting("store", "supernet memory mode (both stages): recompute keeps only each edge's, "
                          "stem's, head's and node's inputs and recomputes in backward; store is plain "
                          "autograd (default: store on CPU, recompute on CUDA)", group="run",
                          choices=MEMORY_MODES, resumable=True,
                          cli_default=lambda values: default_memory(values["device"]))
    order: str = setting("first", "first- or second-order (unrolled) architecture gradient",
                         group="architecture optimiser", choices=ORDERS)
    seed: int = setting(0, "the seed of the supernet's weights and the data order", group="run",
                        type=seed_int)
    device: str = setting("cpu", "cpu, cuda or cuda:N (default: cuda when there is one)", group="run",
                          resumable=True, cli_default=_machine_device)
    edge_partial: int = setting(1, "PC-DARTS partial channels K on the cell's edges (1 = off)",
                                group="space", type=positive_int)
    edge_normalization: bool = setting(False, "PC-DARTS edge normalisation", group="space")
    skip_bn: bool = setting(True, "an affine-free BatchNorm after the skip_connect candidate in the "
                            "search, as after the pools: every candidate's output on the same scale, "
                            "against the collapse onto skip connections", group="space")
    path_norm: bool = setting(False, "stage 2: divide every path by its RMS after resampling before the "
                              "PAM weighs it, so that beta does not compare resolutions", group="space")
    candidates: str = setting("darts", "the cell's candidate ops: darts (DARTS's eight), light (none, "
                              "skip_connect and inverted residuals: expand 3/6, depthwise 3x3/5x5), both, "
                              "or nopool (DARTS's eight without the two poolings)", group="space",
                              choices=tuple(CANDIDATE_SETS))
    rsp_ratio: float = setting(0.5, "fraction of channels that go through the cell", group="space")
    rsp_depth: int = setting(1, "RSP recursion depth", group="space", type=positive_int)
    head_channels: int | None = setting(None, "width of the head's 3x3 conv (none: 4 F; default: 32 on real "
                                        "images, none on the synthetic scenes)", group="space", type=positive_int,
                                        cli_default=_space_default("head_channels"))
    head: str = setting("concat", "the head: concat (every last-layer map upsampled to 1/4, concatenated, "
                        "3x3 conv), light (1x1 conv per map at its own scale, averaged at 1/4, 3x3 conv "
                        "at the head's width, global-context gate) or detail (light, classified at 1/2 with "
                        "a 1x1 projection of the stem's 1/2 map added) (default: detail on real images, "
                        "where it won on CamVid, concat on the synthetic scenes)", group="space", choices=HEAD_KINDS,
                        cli_default=_space_default("head"))
    scale_channels: tuple[int, ...] | None = setting(
        None, "channels of every scale, finest first, the first equal to --channels (none: --channels "
        "doubled at each scale)", group="space", type=channel_list, metavar="C0,C1,...")
    pool_first: bool = setting(False, "stage 2: average-pool a path into a coarser node before its 1x1 "
                               "projection (the same in eval mode, 4^d times fewer FLOPs for a path d "
                               "scales down)", group="space")
    top_k: int = setting(2, "paths kept per trellis node", group="space", type=positive_int)
    same_scale_paths: bool = setting(False, "every node keeps the path from its own scale in the previous "
                                     "layer and --top-k minus 1 more by beta", group="space")
    max_skip: int | None = setting(None, "at most this many skip_connect edges in the derived cell "
                                   "(P-DARTS; none: no limit)", group="space", type=nonnegative_int)
    param_penalty: float = setting(0.0, "lambda of the expected-parameter penalty on the architecture loss "
                                   "(0 = off)", group="cost")
    param_budget: float | None = setting(None, "parameter budget in millions: only the excess over it is "
                                         "penalised (with --random: only architectures within it are drawn)",
                                         group="cost", type=positive_float, scale=1e6, metavar="M")
    flops_budget: float | None = setting(None, "GFLOPs of the derived network at --size: the architecture "
                                         "loss adds --cost-weight * max(0, E[FLOPs] - budget) / budget",
                                         group="cost", type=positive_float, scale=1e9, metavar="G")
    latency_budget: float | None = setting(None, "latency (ms) of the derived network's inference form (BN "
                                           "folded) at --latency-size on --device (CPU: one thread), from "
                                           "a per-piece table measured once, calibrated on whole networks "
                                           "and cached in --latency-table; penalised like --flops-budget",
                                           group="cost", type=positive_float, metavar="MS")
    cost_weight: float = setting(1.0, "lambda of the FLOPs / latency penalties", group="cost", metavar="λ")
    latency_size: tuple[int, int] = setting((512, 1024), "HxW at which the latency table is measured",
                                            group="cost", type=parse_size)
    latency_table: str | None = setting(None, "JSON file caching measured latencies, keyed by device, "
                                        "torch version and shapes (none: $RSPNET_LATENCY_TABLE or "
                                        "~/.cache/rspnet/latency.json)", group="cost", metavar="PATH",
                                        resumable=True)
    w_lr: float = setting(0.025, "SGD learning rate of the supernet's weights (cosine to --w-lr-min)",
                          group="weight optimiser", type=positive_float)
    w_lr_min: float = setting(0.001, "the weights' final learning rate", group="weight optimiser")
    w_momentum: float = setting(0.9, "SGD momentum of the weights", group="weight optimiser")
    w_weight_decay: float = setting(3e-4, "weight decay of the weights", group="weight optimiser")
    grad_clip: float = setting(5.0, "the weights' gradient-norm clip", group="weight optimiser",
                               type=positive_float)
    arch_lr: float = setting(ARCH_LR, "Adam learning rate of the architecture parameters (alpha in stage 1, "
                             "beta in stage 2)", group="architecture optimiser", type=positive_float)
    arch_betas: tuple[float, float] = setting((0.5, 0.999), "Adam betas of the architecture parameters",
                                              group="architecture optimiser", nargs=2, metavar=("B1", "B2"))
    arch_weight_decay: float = setting(1e-3, "weight decay of the architecture parameters",
                                       group="architecture optimiser")
    rescale_channels: tuple[int, ...] | None = setting(
        None, "write the derived architecture at these widths per scale, finest first (the searched proxy "
        "is kept as architecture-proxy.json); none: as searched", group="output", type=channel_list,
        metavar="C0,C1,...", resumable=True)
    rescale_rsp_ratio: float | None = setting(None, "the RSP ratio of the architecture written (none: as "
                                              "searched)", group="output", resumable=True)
    rescale_pool_first: bool | None = setting(None, "pool-first paths in the architecture written (none: as "
                                              "searched)", group="output", resumable=True)

    @property
    def warmup_epochs(self) -> int:
        return self.epochs // 2 if self.warmup is None else self.warmup

    @property
    def primitives(self) -> tuple[str, ...]:
        return CANDIDATE_SETS[self.candidates]

    @property
    def head_width(self) -> int:
        return 4 * self.channels if self.head_channels is None else self.head_channels

    @property
    def space(self) -> SearchSpace:
        return SearchSpace(**{f: getattr(self, f) for f in SearchSpace.__dataclass_fields__})

    @property
    def rescales(self) -> bool:
        """Whether the architecture written differs from the one searched."""
        return any(v is not None for v in (self.rescale_channels, self.rescale_rsp_ratio,
                                           self.rescale_pool_first))


# Settings that may change between a run and its resumption without changing
# what is computed (beyond floating-point rounding).
RESUMABLE_CHANGES = resumable_changes(SearchConfig)


def _cell_channels(width: int, ratio: float, depth: int, what: str) -> int:
    """The channels through the innermost cell of an RSP block ``width``
    wide; ``ValueError`` naming ``what`` when the split cannot be made."""
    try:
        for _ in range(depth):
            width = partial_channels(width, ratio)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None
    return width


def _check_widths(c: SearchConfig, widths) -> None:
    """No width past ``MAX_WIDTH`` (a typo must not ask for terabytes)."""
    from rspnet.architecture import MAX_WIDTH

    for flag, values in (("--channels / --scale-channels", widths), ("--head-channels", (c.head_width,)),
                         ("--rescale-channels", c.rescale_channels or ())):
        if any(v > MAX_WIDTH for v in values):
            raise ValueError(f"{flag}: widths reach {max(values)}, more than {MAX_WIDTH}")


def _check_rescale(c: SearchConfig) -> None:
    """The architecture written must be buildable: checked before the search."""
    if c.rescale_rsp_ratio is not None and not 0 < c.rescale_rsp_ratio < 1:
        raise ValueError(f"--rescale-rsp-ratio must be in (0, 1), got {c.rescale_rsp_ratio}")
    if c.rescale_channels is not None and len(c.rescale_channels) != c.scales:
        raise ValueError(f"--rescale-channels needs {c.scales} widths (one per scale), got "
                         f"{len(c.rescale_channels)}")
    ratio = c.rsp_ratio if c.rescale_rsp_ratio is None else c.rescale_rsp_ratio
    widths = c.rescale_channels or scale_widths(c.channels, c.scales, c.scale_channels)
    for width in widths:
        _cell_channels(width, ratio, c.rsp_depth, f"--rescale-channels width {width} with the RSP ratio {ratio:g}")


def check_config(c: SearchConfig) -> None:
    """``ValueError`` (naming the CLI flag) for settings that cannot search."""
    from rspnet.engine.config import check_run_settings

    data.check_source(c.data, c.data_root, ("train",))
    check_run_settings(c.device, c.batch_size, c.size)
    if c.warmup is not None and not 0 <= c.warmup <= c.epochs:
        raise ValueError(f"--warmup must be in [0, --epochs={c.epochs}], got {c.warmup}")
    if not 0 < c.rsp_ratio < 1:
        raise ValueError(f"--rsp-ratio must be in (0, 1), got {c.rsp_ratio}")
    try:
        widths = scale_widths(c.channels, c.scales, c.scale_channels)
    except ValueError as exc:
        raise ValueError(f"--scale-channels: {exc}") from None
    _check_widths(c, widths)
    for width in widths:
        what = f"--channels {c.channels}" if c.scale_channels is None else f"--scale-channels width {width}"
        channels = _cell_channels(width, c.rsp_ratio, c.rsp_depth, f"{what} with --rsp-ratio/--rsp-depth")
        if channels % c.edge_partial:
            raise ValueError(f"--edge-partial {c.edge_partial} must divide the cell's {channels} channels "
                             f"at every scale")
    _check_rescale(c)
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
