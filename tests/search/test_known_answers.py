"""Tests with a known answer: the architecture step must find the op, or the
path, that is the only one able to solve a toy task. They assert rankings, not
values, after a few dozen architecture steps (DARTS's first-order Architect,
Adam on α / β, bi-level with two batches)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from rspnet.architecture import PRIMITIVES
from rspnet.nn import MixedOp, PathAttention
from rspnet.search import Architect

PARAMETER_FREE = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect")


def _search(model, batches, weight_steps: int, arch_steps: int, arch_lr: float = 0.05):
    """``weight_steps`` of warm-up, then alternate architecture and weight steps."""
    w_opt = torch.optim.Adam(model.weight_parameters(), lr=0.01)
    a_opt = torch.optim.Adam(model.arch_parameters(), lr=arch_lr, betas=(0.5, 0.999))
    architect = Architect(model, a_opt, "first")

    def weight_step(batch):
        w_opt.zero_grad(set_to_none=True)
        model.loss(*batch).backward(inputs=model.weight_parameters())
        w_opt.step()

    for i in range(weight_steps):
        weight_step(batches(i))
    for i in range(arch_steps):
        architect.step(batches(2 * i), batches(2 * i + 1), 0.01, w_opt)
        weight_step(batches(2 * i))


class _ShiftTask(nn.Module):
    """One mixed edge between a 1×1 stem and a 1×1 classifier. The label of a
    pixel is the input 4 columns to its right: only an op whose receptive
    field spans ±4 (sep_conv_5x5: two 5×5; dil_conv_5x5: 5×5 at dilation 2)
    can see it."""

    def __init__(self, channels: int = 8):
        super().__init__()
        self.stem = nn.Conv2d(1, channels, 1)
        self.edge = MixedOp(channels, memory="store")
        self.head = nn.Conv2d(channels, 2, 1)
        self.alphas = nn.Parameter(1e-3 * torch.randn(len(PRIMITIVES)))

    def loss(self, x, y):
        h = self.edge(self.stem(x), torch.softmax(self.alphas, 0))
        return F.cross_entropy(self.head(h), y)

    def arch_parameters(self):
        return [self.alphas]

    def weight_parameters(self):
        return [p for n, p in self.named_parameters() if n != "alphas"]


def _shift_batch(i: int):
    g = torch.Generator().manual_seed(1000 + i)
    x = (torch.rand(8, 1, 16, 16, generator=g) < 0.15).float()
    y = torch.zeros(8, 16, 16, dtype=torch.long)
    y[:, :, :-4] = x[:, 0, :, 4:].long()
    return x, y


def test_a_large_receptive_field_task_selects_the_large_ops():
    torch.manual_seed(0)
    model = _ShiftTask()
    _search(model, _shift_batch, weight_steps=60, arch_steps=50)
    weights = dict(zip(PRIMITIVES, torch.softmax(model.alphas.detach(), 0).tolist()))
    large = max(weights["sep_conv_5x5"], weights["dil_conv_5x5"])
    assert max(weights, key=weights.get) in ("sep_conv_5x5", "dil_conv_5x5"), weights
    assert all(large > weights[name] for name in PARAMETER_FREE), weights


class _OneUsefulPath(nn.Module):
    """A PAM node fusing three sources at 1/1, 1/2 and 1/4 of the output:
    only the 1/4 source carries the label (its sign, upsampled), the others
    are noise. Its β must win, although its bilinear upsampling makes it the
    smoothest path."""

    def __init__(self, channels: int = 4):
        super().__init__()
        self.pam = PathAttention([channels] * 3, channels, affine=False)
        self.head = nn.Conv2d(channels, 2, 1)
        self.betas = nn.Parameter(1e-3 * torch.randn(3))

    def loss(self, inputs, y):
        return F.cross_entropy(self.head(self.pam(list(inputs), self.betas, (16, 16))), y)

    def arch_parameters(self):
        return [self.betas]

    def weight_parameters(self):
        return [p for n, p in self.named_parameters() if n != "betas"]


def _path_batch(i: int):
    g = torch.Generator().manual_seed(2000 + i)
    signal = torch.randn(8, 4, 4, 4, generator=g)
    inputs = (torch.randn(8, 4, 16, 16, generator=g), torch.randn(8, 4, 8, 8, generator=g), signal)
    label = F.interpolate(signal[:, :1], size=(16, 16), mode="bilinear", align_corners=False)
    return inputs, (label[:, 0] > 0).long()


def test_the_only_useful_path_wins_its_node():
    torch.manual_seed(0)
    model = _OneUsefulPath()
    _search(model, _path_batch, weight_steps=40, arch_steps=50)
    weights = torch.softmax(model.betas.detach(), 0).tolist()
    assert weights[2] == max(weights) and weights[2] > 0.5, weights
