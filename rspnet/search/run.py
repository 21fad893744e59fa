"""``rspnet.search.run``: the two-stage search from Python, as ``python -m
rspnet.search`` runs it — resumption, the log, and the outputs
(``architecture.json``, ``cell.png``, ``network.png``, ``alphas.png``,
``betas.png``, ``summary.json``, ``search.log``, checkpoints).

Example::

    from rspnet.engine import RunOptions
    from rspnet.search import SearchConfig, run
    architecture = run(SearchConfig(epochs=4), RunOptions(out="runs/search"))
    print(architecture.fingerprint(), architecture.to_dict()["cell"])
"""
from __future__ import annotations

import os
import resource
from typing import Any

import torch

from rspnet import data
from rspnet.architecture import Architecture, Genotype, cell_from_dict, edge_list, format_cell, format_paths, rescaled
from rspnet.engine import distributed
from rspnet.engine.checkpoint import CheckpointError, refuse_existing, refuse_later
from rspnet.engine.config import RunOptions, local_batch, plain
from rspnet.engine.session import RunError, RunSession
from rspnet.files import write_json
from rspnet.models import RSPNet, count_flops, count_params

from .config import SYNTHETIC_SEARCH_IMAGES, SearchConfig, check_config
from .stage import StageSearch, checkpoint_series, cost_penalties, load_search_checkpoint

__all__ = ["run", "STAGES"]

STAGES = ("1", "2", "both")
def run(config: SearchConfig, options: RunOptions | None = None, stage: str = "both",
        cell: Genotype | None = None) -> Architecture:
    """Search with ``config``: stage ``"1"`` (the cell), ``"2"`` (the paths
    around ``cell``, e.g. ``Architecture.load(path).cell``) or ``"both"``.
    Returns the derived architecture, also written to ``architecture.json``.

    Raises ``RunError`` when the search cannot start (bad settings, a
    checkpoint that cannot be resumed), ``Diverged`` after a NaN,
    ``StopRequested`` after SIGTERM / Ctrl-C (a checkpoint was written),
    ``KeyboardInterrupt`` after a second Ctrl-C; each is logged first.
    """
    try:
        check_config(config)
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        options = (options or RunOptions()).resolved("search", [config.data_root])
        if stage == "2" and cell is None and not options.resume:
            raise ValueError("--stage 2 needs --cell ARCHITECTURE_JSON (the result of stage 1)")
    except ValueError as exc:
        raise RunError(str(exc)) from None
    with RunSession(config.device, options, "search.log") as session:
        return _run(session, config, (1, 2) if stage == "both" else (int(stage),), cell)


def _architecture(config: SearchConfig, cell: Genotype, nodes=None) -> Architecture:
    """The derived architecture; its ``search`` section records every setting."""
    return config.space.architecture(cell, nodes, search=plain(config))


def _written(config: SearchConfig, architecture: Architecture) -> Architecture:
    """The architecture written: the searched one, rescaled when the config
    says so (``rescale_*``; a stage-1 single path keeps its paths' order)."""
    if not config.rescales:
        return architecture
    pool_first = config.rescale_pool_first if architecture.nodes is not None else None
    return rescaled(architecture, scale_channels=config.rescale_channels, rsp_ratio=config.rescale_rsp_ratio,
                    pool_first=pool_first, source="architecture-proxy.json")


def _save(config: SearchConfig, architecture: Architecture, files: dict[str, str]) -> None:
    if config.rescales:
        files["proxy"] = os.path.join(os.path.dirname(files["architecture"]), "architecture-proxy.json")
        architecture.save(files["proxy"])
    _written(config, architecture).save(files["architecture"])


def _peak_memory(device: torch.device) -> dict[str, object]:
    if device.type == "cuda":
        return {"kind": "torch.cuda.max_memory_allocated", "bytes": torch.cuda.max_memory_allocated(device)}
    return {"kind": "peak RSS of the process (ru_maxrss)",
            "bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def _resume_plan(options: RunOptions, stages: tuple[int, ...], log) -> dict[int, tuple[str, dict[str, Any]]]:
    """Rank 0: the verified checkpoint each stage continues from, {stage: (path, state)}."""
    series = {s: checkpoint_series(options.out, s) for s in (1, 2)}
    if not options.resume:
        refuse_existing(options.out, "search")
        return {}
    try:
        if options.resume != "auto":
            state = load_search_checkpoint(options.resume)   # a given file must be good: no fallback
            stage = state["stage"]
            if stage not in stages:
                raise CheckpointError(f"{options.resume} is a stage-{stage} checkpoint, but this search "
                                      f"runs stage(s) {', '.join(map(str, stages))}")
            refuse_later(options.out, [p for s in (1, 2) for n, p in series[s].list()
                                       if s > stage or (s == stage and n > state["step"])], options.resume)
            return {stage: (options.resume, state)}   # earlier stages are over, later ones start afresh
        plan = {}
        for stage in stages:
            found = series[stage].latest_valid(load_search_checkpoint, log)
            if found is not None:
                plan[stage] = found
    except CheckpointError as exc:
        raise CheckpointError(f"--resume: {exc}") from None
    if 2 in plan and 1 in plan and plan[1][1]["epoch"] < plan[1][1]["config"]["epochs"]:
        del plan[1]   # stage 2 has begun: stage 1 is over, whatever its newest good file is
    if not plan:
        refuse_existing(options.out, "search", "search.log")
        log(f"--resume auto: no checkpoint in {options.out}; starting afresh")
    return plan


def _search_data(config: SearchConfig, world_size: int):
    """The classes and the training images a search reads (split A / B),
    every problem a ``RunError`` before anything is written."""
    try:
        local_batch(config.batch_size, world_size)
    except ValueError as exc:
        raise RunError(str(exc)) from None
    length = config.images if config.images is not None else (
        SYNTHETIC_SEARCH_IMAGES if config.data == "synthetic" else None)
    try:
        classes = data.class_table(config.data, config.data_root)
        dataset = data.get_dataset(config.data, "train", root=config.data_root, size=config.size, length=length)
    except (OSError, ValueError) as exc:
        raise RunError(f"--data {config.data}: {exc}") from None
    if len(dataset) // 2 < config.batch_size:
        raise RunError(f"{len(dataset)} training images give halves A/B of {len(dataset) // 2}, "
                       f"fewer than --batch-size {config.batch_size}")
    return classes, dataset


def _run(session: RunSession, config: SearchConfig, stages: tuple[int, ...], cell: Genotype | None) -> Architecture:
    ctx, options, log = session.ctx, session.options, session.log
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    classes, dataset = _search_data(config, ctx.world_size)
    plan = session.on_main(lambda: _resume_plan(options, stages, log))
    if 2 in stages and 2 in plan:   # the stage-2 checkpoint knows its cell
        cell = cell_from_dict(plan[2][1]["cell"])
    elif 2 in stages and cell is None and 1 not in stages:
        raise RunError("--stage 2 needs --cell ARCHITECTURE_JSON (the result of stage 1)")
    session.open_output()
    world = f", {ctx.world_size} processes ({ctx.backend})" if ctx.distributed else ""
    log(f"search: {config.data} data ({classes.num_classes} classes), {len(dataset)} training images at "
        f"{config.size[0]}x{config.size[1]}, device {ctx.device}{world}, output {options.out}")
    files = {"architecture": os.path.join(options.out, "architecture.json"),
             "summary": os.path.join(options.out, "summary.json")}
    weights = _class_weights(config, dataset, classes.num_classes)
    summary: dict[str, Any] = {"config": plain(config), "classes": classes.to_dict(), "stages": {}}
    if weights is not None:
        summary["class_weights"] = weights
    current: list[StageSearch] = []

    def run_stage(stage: int, cell=None) -> StageSearch:
        search = _stage(session, config, stage, dataset, classes.num_classes, plan, cell, weights)
        current[:] = [search]
        search.run()
        last = search.history[-1]
        summary["stages"][str(stage)] = {"epochs": search.epoch, "steps": search.step,
                                         "seconds": round(search.elapsed, 1),
                                         "val_miou": last["val_miou"], "entropy": last["entropy"],
                                         "genotype": search.describe(), "history": search.history}
        return search

    architecture = None
    advice = "try a lower --arch-lr (or SearchConfig.w_lr) or --param-penalty 0"
    with session.guard("search", advice, lambda: current[0].last_checkpoint if current else None):
        if 1 in stages and not (2 in plan and 1 not in plan):
            search = run_stage(1)
            cell = search.model.genotype()
            architecture = _architecture(config, cell)
            if ctx.is_main:
                _stage_outputs(config, search, architecture, files)
            log(f"[stage 1] derived cell: {format_cell(cell)}")
        if 2 in stages:
            search = run_stage(2, cell)
            nodes = search.model.paths(config.top_k, config.same_scale_paths)
            architecture = _architecture(config, cell, nodes)
            if ctx.is_main:
                _stage_outputs(config, search, architecture, files)
            log(f"[stage 2] derived paths: {format_paths(nodes)}")
    if ctx.is_main:
        _print_summary(config, _write_summary(config, architecture, classes.num_classes, ctx, summary, files),
                       files)
    distributed.barrier()   # every rank returns once rank 0's files are written
    return architecture


def _class_weights(config: SearchConfig, dataset, num_classes: int) -> list[float] | None:
    """``--class-weights`` of the search's images: computed once, both stages
    weigh alike."""
    if config.class_weights == "none":
        return None
    return data.class_weights(config.class_weights, *data.class_pixel_counts(dataset, num_classes, data.IGNORE_INDEX))


def _stage(session: RunSession, config: SearchConfig, stage: int, dataset, num_classes: int, plan,
           cell, weights: list[float] | None = None) -> StageSearch:
    """Stage ``stage``'s search, resumed from ``plan``'s checkpoint if it has one."""
    options = session.options
    try:
        search = StageSearch(stage, config, dataset, num_classes, options.out, cell=cell, log=session.log,
                             progress=session.progress, ctx=session.ctx, checkpoint_every=options.checkpoint_every,
                             keep=options.keep, stop=session.stop, ignore_index=data.IGNORE_INDEX,
                             class_weights=weights)
        if stage in plan:
            path, state = plan[stage]
            search.load_state_dict(state, path)
            session.log(f"[stage {stage}] resumed from {path} at epoch {search.epoch + 1}, batch "
                        f"{search.batch}/{search.steps_per_epoch}, step {search.step}")
    except ValueError as exc:   # settings that differ from the checkpoint's
        raise RunError(str(exc)) from None
    return search


def _stage_outputs(config: SearchConfig, search: StageSearch, architecture: Architecture,
                   files: dict[str, str]) -> None:
    """Rank 0, after a stage: the architecture file and the stage's pictures."""
    # imported here: matplotlib is only needed once there is something to draw
    from .plots import plot_cell, plot_network, plot_probabilities_history

    out = os.path.dirname(files["architecture"])
    _save(config, architecture, files)
    if "cell_picture" not in files:
        files["cell_picture"] = os.path.join(out, "cell.png")
        plot_cell(architecture.cell, files["cell_picture"])
    if architecture.nodes is None:
        files["alpha_plot"] = os.path.join(out, "alphas.png")
        plot_probabilities_history(search.history, "alpha", files["alpha_plot"],
                                   [f"edge {s}->{t}" for s, t in edge_list(config.steps)],
                                   op_names=config.primitives)
        return
    files["network_picture"] = os.path.join(out, "network.png")
    files["beta_plot"] = os.path.join(out, "betas.png")
    plot_network(architecture, files["network_picture"])
    plot_probabilities_history(search.history, "beta", files["beta_plot"],
                               [f"node {l}.{s}" for l, s in search.model.nodes],
                               [[f"{l}.{s}" for l, s in src] for src in search.model.sources])


def _write_summary(config: SearchConfig, architecture: Architecture, num_classes: int, ctx, summary,
                   files) -> dict[str, Any]:
    """Rank 0: ``summary.json`` -- the settings, every stage's history, the
    derived network's costs (measured, and as the cost tables see them)."""
    model = RSPNet(architecture, num_classes).eval()
    cost = {"params": count_params(model), "flops": count_flops(model, config.size)}
    for metric, penalty in cost_penalties(config, num_classes, ctx.device).items():
        cost[f"table_{metric}"] = penalty.table.architecture(architecture)
        cost[f"{metric}_budget"] = penalty.budget
        if metric == "latency":
            cost["latency_calibration"] = penalty.table.calibration
    if config.rescales:   # the network of architecture.json, beside the searched proxy's
        written = RSPNet(_written(config, architecture), num_classes).eval()
        summary["written"] = {"params": count_params(written), "flops": count_flops(written, config.size)}
    seconds = sum(s["seconds"] for s in summary["stages"].values())
    summary.update({"derived": {**cost, "input": [1, 3, *config.size],
                                "topology": "single_path" if architecture.nodes is None else "trellis"},
                    "search_seconds": round(seconds, 1), "peak_memory": _peak_memory(ctx.device),
                    "world_size": ctx.world_size, "files": files})
    write_json(files["summary"], summary)
    return summary


def _print_summary(config: SearchConfig, summary: dict[str, Any], files: dict[str, str]) -> None:
    cost, peak = summary["derived"], summary["peak_memory"]
    print(f"\nderived network ({cost['topology']}): {cost['params'] / 1e6:.3f} M params, "
          f"{cost['flops'] / 1e9:.3f} GFLOPs at {config.size[0]}x{config.size[1]}")
    if "table_flops" in cost:
        print(f"  cost table: {cost['table_flops'] / 1e9:.3f} GFLOPs (budget {cost['flops_budget'] / 1e9:.3f})")
    if "table_latency" in cost:
        print(f"  cost table: {cost['table_latency']:.1f} ms at {config.latency_size[0]}x{config.latency_size[1]} "
              f"(budget {cost['latency_budget']:.1f} ms; the pieces' sum x {cost['latency_calibration']:.2f}, "
              f"the calibration on whole networks)")
    if "written" in summary:
        print(f"written rescaled: {summary['written']['params'] / 1e6:.3f} M params, "
              f"{summary['written']['flops'] / 1e9:.3f} GFLOPs (the proxy: {files['proxy']})")
    print(f"search time: {summary['search_seconds']:.1f} s; peak memory: {peak['bytes'] / 2**20:.0f} MiB "
          f"({peak['kind']})")
    print(f"architecture file: {files['architecture']}")
    print("pictures: " + ", ".join(v for k, v in files.items() if k.endswith(("picture", "plot"))))
    print(f"summary: {files['summary']}")
