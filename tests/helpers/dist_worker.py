"""Test-only entry point for data-parallel runs (not a test module).

``torchrun --standalone --nproc_per_node=2 tests/helpers/dist_worker.py SPEC.json``
runs, in one process group, each run of SPEC (a JSON list of
``{"cli": "search"|"train", "argv": [...], "dump": DIR, "exact": bool}``)
through the CLI's own ``main``. Production code writes files on rank 0 only;
here every rank additionally dumps its final model and optimiser states to
``DIR/rank{R}-{name}.pt`` (by wrapping ``StageSearch.run`` / ``Trainer.run``),
so that a test can compare the ranks with each other and with one process.

``stop_at`` (``{"rank", "step"}``, and ``"stage"`` for the search): that
rank alone asks to stop (as SIGTERM does) during that step.

``exact``: the comparison of N processes with one process on the same global
batch can only hold to rounding where nothing couples the samples of a batch
other than the mean of the loss over the batch. Two things do:

* BatchNorm in training mode normalises with the statistics of each rank's
  shard (SyncBatchNorm, which would fix that, has no CPU implementation).
  ``exact`` keeps every BatchNorm in evaluation mode (its running statistics,
  which start at mean 0 / variance 1 and are never updated, so they are the
  same on every rank and in one process).
* Cross-entropy with ignored pixels (label 255) averages over the labelled
  pixels of each rank's shard, and shards hold different numbers of them.
  ``exact`` relabels ignored pixels as class 0, so every shard's mean is over
  the same number of pixels and the mean of the ranks' means is the global mean.

It also computes in float64 (default dtype and images), so that the remaining
differences (the order of the sums) are ~1e-15 relative rather than fp32's
~1e-7, and the comparison can be tight.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys

import torch
import torch.nn as nn

# the checkout's root (tests/helpers/ -> tests/ -> root), importable when run as a script
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from rspnet.engine import distributed  # noqa: E402


class _ExactDataset(torch.utils.data.Dataset):
    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        image, label = self.dataset[index]
        return image.double(), torch.where(label == 255, torch.zeros_like(label), label)


def _dump_states(dump: str, name: str, model: nn.Module, optimizers: dict,
                 average: nn.Module | None = None) -> None:
    state = {"model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
    if average is not None:   # training with --ema: the moving average too
        state["average"] = {k: v.detach().cpu().clone() for k, v in average.state_dict().items()}
    state.update({k: opt.state_dict() for k, opt in optimizers.items()})
    torch.save(state, os.path.join(dump, f"rank{distributed.rank()}-{name}.pt"))


@contextlib.contextmanager
def patched(cli: str, dump: str | None, exact: bool, stop_at: dict | None = None):
    """The test-only hooks around one run; everything is restored on exit."""
    undo = []

    def setattr_(obj, name, value):
        undo.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    if dump:
        if cli == "search":
            from rspnet.search.stage import StageSearch
            run = StageSearch.run

            def search_run(self, *args, **kwargs):
                run(self, *args, **kwargs)
                _dump_states(dump, f"stage{self.stage}", self.model,
                             {"w_optimizer": self.w_optimizer, "a_optimizer": self.a_optimizer})
            setattr_(StageSearch, "run", search_run)
        else:
            from rspnet.train import Trainer
            run = Trainer.run

            def train_run(self, *args, **kwargs):
                run(self, *args, **kwargs)
                _dump_states(dump, "train", self.model, {"optimizer": self.optimizer}, self.average)
            setattr_(Trainer, "run", train_run)
    if stop_at:
        # a stop request (what SIGTERM sets) on one rank only, during a given step
        if cli == "search":
            from rspnet.search.stage import StageSearch as Loop
        else:
            from rspnet.train import Trainer as Loop
        init = Loop.__init__

        def init_with_stop(self, *args, **kwargs):
            init(self, *args, **kwargs)
            requested = self.stop
            self.stop = lambda: requested() or (
                distributed.rank() == stop_at["rank"] and getattr(self, "stage", 1) == stop_at.get("stage", 1)
                and self.step + 1 >= stop_at["step"])
        setattr_(Loop, "__init__", init_with_stop)
    old_dtype = torch.get_default_dtype()
    if exact:
        import rspnet.data
        torch.set_default_dtype(torch.float64)
        setattr_(nn.modules.batchnorm._BatchNorm, "train",
                 lambda self, mode=True: nn.Module.train(self, False))
        if cli == "search":
            get_dataset = rspnet.data.get_dataset
            setattr_(rspnet.data, "get_dataset", lambda *a, **k: _ExactDataset(get_dataset(*a, **k)))
        else:
            import rspnet.train.trainer
            build = rspnet.train.trainer.build_datasets
            setattr_(rspnet.train.trainer, "build_datasets",
                     lambda config: tuple(_ExactDataset(d) for d in build(config)))
    try:
        yield
    finally:
        torch.set_default_dtype(old_dtype)
        for obj, name, value in reversed(undo):
            setattr(obj, name, value)


def run_one(spec: dict) -> int:
    if spec["cli"] == "search":
        from rspnet.search.__main__ import main
    else:
        from rspnet.train.__main__ import main
    with patched(spec["cli"], spec.get("dump"), spec.get("exact", False), spec.get("stop_at")):
        return main(spec["argv"])


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        specs = json.load(f)
    ctx = distributed.init("cpu")     # one process group for every run of the spec
    try:
        codes = [run_one(spec) for spec in specs]
    finally:
        distributed.cleanup(ctx)
    # a run asked to stop exits with the resumable-stop status, every other one with 0
    from rspnet.engine.session import EXIT_OK, EXIT_STOPPED
    expected = [EXIT_STOPPED if spec.get("stop_at") else EXIT_OK for spec in specs]
    if codes != expected:
        print(f"dist_worker: exit statuses {codes}, expected {expected}", file=sys.stderr)
    sys.exit(0 if codes == expected else 1)
