"""Pictures of a search: the derived cell, the derived trellis, and the
architecture weights over the epochs. matplotlib only (no graphviz), Agg
backend, PNG files."""
from __future__ import annotations

import math
import os
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
from matplotlib.patches import FancyArrowPatch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from rspnet.architecture import OP_NAMES, PRIMITIVES, Architecture, Genotype  # noqa: E402

_OP_COLOURS = dict(zip(OP_NAMES, plt.get_cmap("tab10").colors + plt.get_cmap("Dark2").colors))


def plot_cell(genotype: Genotype, path: str | os.PathLike) -> None:
    """The cell as a DAG: input and intermediate nodes on a line, each kept
    edge an arc labelled with its op (a node's two edges on opposite sides
    so that their labels do not collide)."""
    steps = max(t for _, _, t in genotype.normal)
    fig, ax = plt.subplots(figsize=(2.0 + 1.9 * steps, 3.8))
    side: dict[int, int] = {}
    for op, source, target in genotype.normal:
        sign = side[target] = -side.get(target, -1)  # +1 above for the first edge, -1 below next
        span = 2.0 * (target - source)
        rad = 0.0 if target - source == 1 else 0.35
        colour = _OP_COLOURS[op]
        # arc3 puts the control point rad·span off the chord, the curve's apex half as far
        ax.add_patch(FancyArrowPatch((2.0 * source, 0), (2.0 * target, 0),
                                     connectionstyle=f"arc3,rad={-sign * rad}", arrowstyle="-|>",
                                     mutation_scale=14, lw=2, color=colour, shrinkA=13, shrinkB=13))
        ax.text(2.0 * source + span / 2, sign * (rad * span / 2 + 0.12), op, fontsize=7,
                ha="center", va="center",
                bbox=dict(boxstyle="round,pad=0.15", fc="white", ec=colour, lw=0.8))
    for node in range(steps + 1):
        ax.text(2.0 * node, 0, "in" if node == 0 else str(node), ha="center", va="center",
                fontsize=9, bbox=dict(boxstyle="circle", fc="#dde8f6", ec="k"))
    concat = ", ".join(str(t) for t in genotype.normal_concat)
    ax.set_title(f"derived cell — output: 1×1 conv + BN of concat({concat})", fontsize=9)
    ax.set_xlim(-0.8, 2.0 * steps + 0.8)
    ax.set_ylim(-0.4 * steps - 0.6, 0.4 * steps + 0.6)
    ax.set_aspect("equal")
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)


def plot_network(architecture: Architecture, path: str | os.PathLike) -> None:
    """The derived trellis: layers left to right, scales top (1/4) to bottom
    (1/32); pruned positions faint; kept paths with width ∝ weight."""
    if architecture.nodes is None:
        raise ValueError("plot_network: the architecture has no macro part (stage 1 only)")
    layers, scales = architecture.layers, architecture.scales
    fig, ax = plt.subplots(figsize=(1.6 + 0.9 * (layers + 2), 1.2 + 0.9 * scales))
    kept = {n.node for n in architecture.nodes}
    for layer in range(1, layers + 1):
        for scale in range(min(layer, scales - 1) + 1):
            if (layer, scale) not in kept:
                ax.plot(layer, -scale, "o", ms=9, mfc="none", mec="0.8")
    for n in architecture.nodes:
        for (sl, ss), w in n.paths:
            ax.plot([sl, n.node[0]], [-ss, -n.node[1]], "-", color="tab:blue", lw=0.5 + 5 * w,
                    alpha=0.8, solid_capstyle="round")
    for n in architecture.nodes:
        ax.plot(n.node[0], -n.node[1], "o", ms=10, color="tab:orange", mec="k")
        if n.node[0] == layers:
            ax.plot([layers, layers + 1], [-n.node[1], 0], ":", color="0.5")
    ax.plot(0, 0, "s", ms=11, color="0.3")
    ax.plot(layers + 1, 0, "D", ms=11, color="0.3")
    ax.set_yticks([-s for s in range(scales)], [f"1/{4 * 2 ** s}" for s in range(scales)])
    ax.set_xticks(range(layers + 2), ["stem"] + [str(i) for i in range(1, layers + 1)] + ["head"])
    ax.set_xlabel("layer")
    ax.set_ylim(-scales + 0.4, 0.8)
    ax.set_title("derived network (line width ∝ path weight)")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_probabilities_history(history: Sequence[dict[str, Any]], kind: str, path: str | os.PathLike,
                         titles: Sequence[str], sources: Sequence[Sequence[str]] | None = None,
                         op_names: Sequence[str] = PRIMITIVES) -> None:
    """softmax(α) per edge (``kind="alpha"``: one line per op, one legend) or
    softmax(β) per node (``kind="beta"``: one line per incoming path, named
    by ``sources``) over the epochs, one small panel per edge / node."""
    epochs = [h["epoch"] for h in history]
    series = [h["probabilities"][kind] for h in history]      # [epoch][row][entry]
    rows = len(series[0])
    cols = min(rows, 5)
    grid = math.ceil(rows / cols)
    fig, axes = plt.subplots(grid, cols, figsize=(2.6 * cols, 2.0 * grid), squeeze=False,
                             sharex=True)
    for r in range(rows):
        ax = axes[r // cols][r % cols]
        for k in range(len(series[0][r])):
            label = op_names[k] if kind == "alpha" else sources[r][k]
            ax.plot(epochs, [s[r][k] for s in series], marker=".", lw=1, label=label,
                    color=_OP_COLOURS[label] if kind == "alpha" else None)
        ax.set_title(titles[r], fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if kind == "beta":
            ax.legend(fontsize=6, title="from", title_fontsize=6)
    for r in range(rows, grid * cols):
        axes[r // cols][r % cols].axis("off")
    if kind == "alpha":
        fig.legend(*axes[0][0].get_legend_handles_labels(), loc="lower center", ncol=4, fontsize=7)
    # the title in the top 0.3 inch, the panels' own titles below it
    fig.suptitle(f"softmax({kind}) over epochs", fontsize=10, y=1 - 0.08 / (2.0 * grid))
    # fixed margins: tight_layout costs more than drawing a grid of small panels
    fig.subplots_adjust(left=0.06, right=0.98, top=1 - 0.6 / (2.0 * grid), hspace=0.45, wspace=0.3,
                        bottom=(0.9 if kind == "alpha" else 0.35) / (2.0 * grid))
    fig.savefig(path, dpi=110)
    plt.close(fig)
