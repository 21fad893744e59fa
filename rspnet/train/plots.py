"""The training curves picture (``curves.png``)."""
from __future__ import annotations

from typing import Any, Sequence

from rspnet.files import atomic_open

__all__ = ["plot_curves"]


def plot_curves(history: Sequence[dict[str, Any]], path: str, title: str = "") -> None:
    """Loss (train, val) and val mIoU per epoch, written atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_miou) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], label="train")
    val = [(r["epoch"], r["val_loss"]) for r in history if r["val_loss"] is not None]
    if val:
        ax_loss.plot(*zip(*val), "o-", label="val")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy")
    ax_loss.set_yscale("log")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    miou = [(r["epoch"], 100 * r["val_miou"]) for r in history if r["val_miou"] is not None]
    if miou:
        ax_miou.plot(*zip(*miou), "o-", color="tab:green")
    ax_miou.set_xlabel("epoch")
    ax_miou.set_ylabel("val mIoU (%)")
    ax_miou.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_open(path) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
