import copy

import pytest
import torch
import torch.nn as nn

from rspnet.search import Architect, ParamPenalty, SinglePathSupernet

D = torch.float64


class Toy(nn.Module):
    """A supernet stand-in whose ∇_α L is affine in w, so that the Architect's
    central finite difference is exact and the unrolled gradient can be
    checked against autograd to rounding. It also counts its forward passes in
    a buffer, like BatchNorm's num_batches_tracked."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(5, generator=g, dtype=D))
        self.alpha = nn.Parameter(torch.randn(3, generator=g, dtype=D))
        self.register_buffer("A", torch.randn(5, 3, generator=g, dtype=D))
        self.register_buffer("calls", torch.zeros((), dtype=D))
        self.register_buffer("counts", torch.tensor([10.0, 200.0, 3000.0], dtype=D))

    def loss_at(self, w, x, y):
        s = torch.softmax(self.alpha, 0)
        return 0.5 * ((x @ w - y) ** 2).mean() + (self.A @ s) @ w + 0.1 * (s ** 2).sum()

    def loss(self, x, y):
        self.calls += 1
        return self.loss_at(self.w, x, y)

    def arch_parameters(self):
        return [self.alpha]

    def weight_parameters(self):
        return [self.w]

    def expected_params(self):
        return (torch.softmax(self.alpha, 0) * self.counts).sum()


def _batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 5, generator=g, dtype=D), torch.randn(8, generator=g, dtype=D))
            for _ in range(3)]


def _setup(order, penalty=None):
    model = Toy()
    w_opt = torch.optim.SGD([model.w], lr=0.1, momentum=0.9, weight_decay=3e-4)
    a, b, c = _batches()
    model.loss(*c).backward()   # one real step so that SGD has a momentum buffer
    w_opt.step()
    a_opt = torch.optim.SGD([model.alpha], lr=1.0)  # α_new = α - grad: reads the gradient back
    return model, w_opt, Architect(model, a_opt, order, penalty), a, b


def test_first_order_is_the_validation_gradient():
    model, w_opt, architect, train, valid = _setup("first")
    alpha0 = model.alpha.detach().clone()
    expected = torch.autograd.grad(model.loss_at(model.w, *valid), model.alpha)[0]
    architect.step(train, valid, lr=0.1, w_optimizer=w_opt)
    torch.testing.assert_close(alpha0 - model.alpha.detach(), expected, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("penalty", [None, ParamPenalty(0.5), ParamPenalty(2.0, budget=100.0)])
def test_second_order_is_the_exact_unrolled_gradient(penalty):
    model, w_opt, architect, train, valid = _setup("second", penalty)
    lr, momentum, wd = 0.1, 0.9, 3e-4
    w0 = model.w.detach().clone()
    calls0 = model.calls.clone()
    alpha0 = model.alpha.detach().clone()
    buf = w_opt.state[model.w]["momentum_buffer"]
    # exact: differentiate L_B(w'(α), α) through the unrolled SGD step
    w = model.w
    g = torch.autograd.grad(model.loss_at(w, *train), w, create_graph=True)[0]
    w_unrolled = w - lr * (momentum * buf + g + wd * w)
    objective = model.loss_at(w_unrolled, *valid)
    if penalty is not None:
        objective = objective + penalty(model)
    expected = torch.autograd.grad(objective, model.alpha)[0]
    architect.step(train, valid, lr=lr, w_optimizer=w_opt)
    torch.testing.assert_close(alpha0 - model.alpha.detach(), expected, rtol=1e-10, atol=1e-12)
    assert torch.equal(model.w.detach(), w0)          # weights put back bit for bit
    assert torch.equal(model.calls, calls0)          # buffers restored


def test_penalty_definitions():
    model = Toy()
    e = (torch.softmax(model.alpha, 0) * model.counts).sum()
    torch.testing.assert_close(ParamPenalty(0.5)(model), 0.5 * e / 1e6)
    torch.testing.assert_close(ParamPenalty(2.0, budget=100.0)(model), 2.0 * torch.relu(e / 100 - 1))
    assert ParamPenalty(2.0, budget=1e9)(model) == 0


def test_second_order_on_a_supernet_changes_only_the_architecture():
    torch.manual_seed(0)
    model = SinglePathSupernet(5, channels=4, head_channels=8, memory="recompute")
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=0.05, momentum=0.9, weight_decay=3e-4)
    a_opt = torch.optim.Adam(model.arch_parameters(), lr=3e-4)
    x = torch.randn(2, 3, 32, 32)
    y = torch.randint(0, 5, (2, 32, 32))
    model.loss(x, y).backward()
    w_opt.step()
    weights = copy.deepcopy(model.state_dict())
    alpha0 = model.alphas.detach().clone()
    loss = Architect(model, a_opt, "second").step((x, y), (x.flip(-1), y.flip(-1)), 0.05, w_opt)
    assert loss > 0
    for name, value in model.state_dict().items():
        if name != "alphas":
            assert torch.equal(value, weights[name]), name
    assert not torch.equal(model.alphas.detach(), alpha0)
    assert torch.isfinite(model.alphas).all()


def test_unknown_order():
    with pytest.raises(ValueError, match="order"):
        Architect(Toy(), None, "third")
