import copy

import pytest
import torch

from rspnet.nn import MixedOp, PRIMITIVES, set_memory_mode


def _pair(C=6, partial=1, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    store = MixedOp(C, "store", partial).to(dtype)
    recompute = copy.deepcopy(store)
    recompute.memory = "recompute"
    return store, recompute


def _run(op, x, alpha, grad_out):
    x = x.clone().requires_grad_()
    alpha = alpha.clone().requires_grad_()
    y = op(x, torch.softmax(alpha, 0))
    params = list(op.parameters())
    grads = torch.autograd.grad(y, [x, alpha] + params, grad_out)
    return y.detach(), grads


def test_store_matches_the_definition():
    store, _ = _pair()
    x = torch.randn(2, 6, 8, 8, dtype=torch.float64)
    w = torch.softmax(torch.randn(8, dtype=torch.float64), 0)
    expected = sum(w[k] * op(x) for k, op in enumerate(store.ops))
    torch.testing.assert_close(store(x, w), expected, rtol=0, atol=1e-14)


@pytest.mark.parametrize("partial", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_recompute_gives_the_same_output_and_gradients(partial, dtype):
    store, recompute = _pair(partial=partial, dtype=dtype)
    x = torch.randn(3, 6, 9, 7, dtype=dtype)
    alpha = torch.randn(8, dtype=dtype)
    grad_out = torch.randn(3, 6, 9, 7, dtype=dtype)
    y_s, g_s = _run(store, x, alpha, grad_out)
    y_r, g_r = _run(recompute, x, alpha, grad_out)
    # fp64: only summation order differs; fp32: assert_close's defaults are fp32 rounding
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else {}
    torch.testing.assert_close(y_r, y_s, **tol)
    assert len(g_s) == len(g_r) == 2 + len(list(store.parameters()))
    for a, b in zip(g_r, g_s):
        torch.testing.assert_close(a, b, **tol)


def test_batchnorm_statistics_are_updated_once():
    store, recompute = _pair()
    x = torch.randn(2, 6, 8, 8, dtype=torch.float64)
    alpha = torch.randn(8, dtype=torch.float64)
    grad_out = torch.randn_like(x)
    _run(store, x, alpha, grad_out)
    _run(recompute, x, alpha, grad_out)
    for (name, a), b in zip(store.named_buffers(), recompute.buffers()):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-14, msg=name)
        if name.endswith("num_batches_tracked"):
            assert int(b) == 1


def test_eval_mode_and_no_grad_agree():
    store, recompute = _pair()
    store.eval(), recompute.eval()
    x = torch.randn(2, 6, 8, 8, dtype=torch.float64)
    w = torch.softmax(torch.randn(8, dtype=torch.float64), 0)
    with torch.no_grad():
        torch.testing.assert_close(recompute(x, w), store(x, w), rtol=1e-12, atol=1e-14)


def _saved_bytes(fn):
    """Bytes of distinct tensors autograd saves for backward while running fn."""
    seen = {}

    def pack(t):
        seen[(t.untyped_storage().data_ptr(), t.dtype, t.shape)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out


def test_recompute_saves_only_input_weights_and_parameters():
    store, recompute = _pair(C=8, dtype=torch.float32)
    x = torch.randn(2, 8, 16, 16, requires_grad=True)
    alpha = torch.randn(8, requires_grad=True)
    params = sum(p.numel() * 4 for p in store.parameters())
    saved_r, _ = _saved_bytes(lambda: recompute(x, alpha))  # weights given directly: no softmax
    assert saved_r == x.numel() * 4 + alpha.numel() * 4 + params
    saved_s, _ = _saved_bytes(lambda: store(x, alpha))
    assert saved_s > 10 * x.numel() * 4  # every candidate's activations


def test_gradients_reach_inputs_that_need_them_only():
    _, recompute = _pair()
    x = torch.randn(2, 6, 8, 8, dtype=torch.float64)           # no grad for x
    w = torch.softmax(torch.randn(8, dtype=torch.float64), 0)   # no grad for the weights
    y = recompute(x, w)
    y.sum().backward()
    assert all(p.grad is not None for p in recompute.parameters())


def test_set_memory_mode_and_bad_mode():
    store, _ = _pair()
    set_memory_mode(store, "recompute")
    assert store.memory == "recompute"
    with pytest.raises(ValueError, match="memory"):
        set_memory_mode(store, "cheap")
    with pytest.raises(ValueError, match="memory"):
        MixedOp(4, "cheap")
    with pytest.raises(ValueError, match="partial"):
        MixedOp(6, partial=4)


def test_partial_channels_reference():
    store, _ = _pair(partial=2)
    x = torch.randn(2, 6, 5, 5, dtype=torch.float64)
    w = torch.softmax(torch.randn(8, dtype=torch.float64), 0)
    mixed = sum(w[k] * op(x[:, :3]) for k, op in enumerate(store.ops))
    joined = torch.cat([mixed, x[:, 3:]], 1)
    expected = torch.stack([joined[:, :3], joined[:, 3:]], 2).reshape(2, 6, 5, 5)  # shuffle, 2 groups
    torch.testing.assert_close(store(x, w), expected, rtol=0, atol=1e-14)


def test_expected_params():
    op = MixedOp(4)
    counts = {"sep_conv_3x3": 2 * (4 * 9 + 16), "sep_conv_5x5": 2 * (4 * 25 + 16),
              "dil_conv_3x3": 4 * 9 + 16, "dil_conv_5x5": 4 * 25 + 16}
    w = torch.softmax(torch.randn(8), 0)
    expected = sum(w[k] * counts.get(name, 0) for k, name in enumerate(PRIMITIVES))
    torch.testing.assert_close(op.expected_params(w), expected)
