"""``rspnet.train.run``: one training run from Python, as ``python -m
rspnet.train`` runs it — choosing the checkpoint to resume from, the log, the
outputs (``metrics.json``, ``curves.png``, ``train.log``, checkpoints and
``best.pt``) and what happens when a run stops early.

Example::

    from rspnet.engine import RunOptions
    from rspnet.train import TrainConfig, run
    report = run(TrainConfig(epochs=2), "runs/search/architecture.json", RunOptions(out="runs/train"))
    print(report["best_val_miou"])
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import torch

from rspnet import data
from rspnet.architecture import Architecture
from rspnet.engine import distributed
from rspnet.engine.checkpoint import CheckpointError, refuse_existing, refuse_later
from rspnet.engine.config import RunOptions, changed_settings, local_batch, plain
from rspnet.engine.session import RunError, RunSession
from rspnet.files import write_json

from .checkpoint import check_architecture, checkpoint_series, load_train_checkpoint
from .config import RESUMABLE_CHANGES, TrainConfig, check_config
from .plots import plot_curves
from . import trainer as trainer_module
from .trainer import Trainer

__all__ = ["run"]


def run(config: TrainConfig, architecture: str | os.PathLike | Mapping | Architecture,
        options: RunOptions | None = None, datasets=None, source: str | None = None) -> dict[str, Any]:
    """Train ``architecture`` (anything ``Architecture.load`` reads) with
    ``config``; returns the report also written to ``metrics.json``.

    Raises ``RunError`` when the run cannot start (bad settings, a checkpoint
    that cannot be resumed), ``Diverged`` after a NaN, ``StopRequested`` after
    SIGTERM / Ctrl-C (a checkpoint was written), ``KeyboardInterrupt`` after a
    second Ctrl-C; each is logged first, and the outputs hold what was done.
    ``datasets``: (train, val) instead of those ``config`` names; ``source``:
    where the architecture came from, for the records (default: its path).
    """
    if source is None:
        source = os.path.abspath(architecture) if isinstance(architecture, (str, os.PathLike)) else ""
    try:
        check_config(config)
        architecture = Architecture.load(architecture)
        inputs = [config.data_root, source if source and os.path.isfile(source) else None]
        options = (options or RunOptions()).resolved("train", inputs)
    except (OSError, ValueError) as exc:
        raise RunError(str(exc)) from None
    with RunSession(config.device, options, "train.log") as session:
        return _run(session, config, architecture, source, datasets)


def _resume_state(config: TrainConfig, architecture: Architecture, arch_name: str, options: RunOptions,
                  warn) -> tuple[str, dict] | None:
    """Rank 0: the verified checkpoint to continue from, or None."""
    series = checkpoint_series(options.out)
    if not options.resume:
        refuse_existing(options.out, "training")
        return None
    try:
        if options.resume == "auto":
            found = series.latest_valid(load_train_checkpoint, warn)
            if found is None:
                refuse_existing(options.out, "training", "train.log")
                return None
            path, state = found
        else:
            path, state = options.resume, load_train_checkpoint(options.resume)   # must be good: no fallback
        name = f"checkpoint {path}"
        check_architecture(state, architecture, data.class_table(config.data, config.data_root).num_classes,
                           name, arch_name)
        if "config" in state:
            changed = changed_settings(state["config"], config, RESUMABLE_CHANGES)
            if changed:
                raise CheckpointError(f"{name} was trained with other settings; resuming would not continue "
                                      f"it exactly. Changed: "
                                      + "; ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in changed))
        if int(state.get("epoch", 0)) >= config.epochs:
            raise CheckpointError(f"{path} has already trained {state['epoch']} epochs; pass a larger "
                                  f"--epochs to train longer")
        if options.resume != "auto":   # (with auto, later files are damaged ones, which the run rewrites)
            refuse_later(options.out, [p for n, p in series.list() if n > int(state.get("step", 0))], path)
    except CheckpointError as exc:
        raise CheckpointError(f"--resume: {exc}") from None
    return path, state


def _trainer(session: RunSession, config: TrainConfig, architecture: Architecture, source: str, datasets):
    """The data checked and the checkpoint to resume chosen before anything is
    written, then the output directory and the ``Trainer``."""
    options = session.options
    try:
        local_batch(config.batch_size, session.ctx.world_size)
        if datasets is None:
            try:
                datasets = trainer_module.build_datasets(config)   # (looked up late: tests wrap it)
            except (OSError, ValueError) as exc:
                raise ValueError(f"--data {config.data}: {exc}") from None
    except ValueError as exc:
        raise RunError(str(exc)) from None
    arch_name = f"--arch {source}" if source else "--arch"
    found = session.on_main(lambda: _resume_state(config, architecture, arch_name, options, session.log))
    session.open_output()
    try:
        trainer = Trainer(config, architecture, options.out, source, session.log, progress=session.progress,
                          datasets=datasets, ctx=session.ctx, checkpoint_every=options.checkpoint_every,
                          stop=session.stop, keep=options.keep)
    except ValueError as exc:
        raise RunError(str(exc)) from None
    return trainer, found


def _run(session: RunSession, config: TrainConfig, architecture: Architecture, source: str,
         datasets) -> dict[str, Any]:
    ctx, options, log = session.ctx, session.options, session.log
    trainer, found = _trainer(session, config, architecture, source, datasets)
    if found is not None:
        path, state = found
        trainer.load_state_dict(state, f"checkpoint {path}")
        log(f"resumed from {path}: epoch {trainer.epoch + 1}, batch {trainer.batch}/"
            f"{trainer.steps_per_epoch}, step {trainer.step}")
    elif options.resume == "auto":
        log(f"--resume auto: no checkpoint in {options.out}; starting afresh")
    params = sum(p.numel() for p in trainer.model.parameters())
    world = f", {ctx.world_size} processes ({ctx.backend})" if ctx.distributed else ""
    log(f"train: {config.data} data ({trainer.classes.num_classes} classes), {len(trainer.train_set)} train / "
        f"{len(trainer.val_set)} val images at {config.size[0]}x{config.size[1]}, {params / 1e6:.3f} M params, "
        f"architecture {architecture.fingerprint()}, device {ctx.device}{world}"
        f"{'' if trainer.amp_dtype is None else ', amp ' + str(trainer.amp_dtype).split('.')[-1]}, "
        f"{config.epochs} epochs x {trainer.steps_per_epoch} steps, seed {config.seed}, output {options.out}")

    files = {"metrics": os.path.join(options.out, "metrics.json"),
             "curves": os.path.join(options.out, "curves.png"),
             "best": os.path.join(options.out, "best.pt"), "log": session.log_path}
    report: dict[str, Any] = {}

    def write_outputs(final: dict[str, Any] | None) -> None:
        report.update({"config": plain(config), "architecture": source,
                       "architecture_fingerprint": architecture.fingerprint(),
                       "params": params, "epochs_done": trainer.epoch, "steps_done": trainer.step,
                       "train_seconds": round(trainer.elapsed, 1), "best_val_miou": trainer.best_miou,
                       "best_epoch": trainer.best_epoch, "history": trainer.history, "files": files,
                       "class_weights": trainer.class_weights,
                       "world_size": ctx.world_size, "torch": torch.__version__})
        if final is not None:
            report["final_val"] = final
        if not ctx.is_main:
            return
        write_json(files["metrics"], report)
        if trainer.history:
            plot_curves(trainer.history, files["curves"],
                        f"rspnet.train {config.data} {config.size[0]}x{config.size[1]} seed {config.seed}")

    with session.guard("training", "try a lower --lr", lambda: trainer.last_checkpoint,
                       on_exit=lambda: write_outputs(None)):
        trainer.run()
    write_outputs(trainer.last_val)
    best = "n/a" if trainer.best_miou is None else f"{100 * trainer.best_miou:.2f}%"
    log(f"done: {trainer.epoch} epochs, {trainer.step} steps, {trainer.elapsed:.1f} s; best val mIoU {best} "
        f"(epoch {trainer.best_epoch}); checkpoints in {options.out}, metrics {files['metrics']}, "
        f"curves {files['curves']}")
    distributed.barrier()   # every rank returns once rank 0's files are written
    return report
