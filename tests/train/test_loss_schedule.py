"""rspnet.train's loss (OHEM cross-entropy) and learning-rate schedule (poly)."""
import pytest
import torch
import torch.nn.functional as F

from rspnet.train import ohem_cross_entropy, poly_lambda


def test_poly_schedule():
    lam = poly_lambda(100, 0.9)
    assert lam(0) == 1.0 and lam(100) == 0.0 and lam(150) == 0.0
    assert lam(50) == pytest.approx(0.5 ** 0.9)


def test_ohem_limits():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 19, 8, 8, generator=gen)
    target = torch.randint(0, 19, (2, 8, 8), generator=gen)
    target[0, 0] = 255
    plain = F.cross_entropy(logits, target, ignore_index=255)
    # every pixel is "hard" when the threshold probability is ~1: plain CE
    assert ohem_cross_entropy(logits, target, thresh=1 - 1e-7, min_kept=1) == pytest.approx(plain.item(), rel=1e-6)
    # nothing is hard enough at a ~0 threshold: only the min_kept hardest pixels
    losses = F.cross_entropy(logits, target, ignore_index=255, reduction="none")[target != 255]
    hardest = losses.topk(5).values.mean()
    assert ohem_cross_entropy(logits, target, thresh=1e-30, min_kept=5) == pytest.approx(hardest.item(), rel=1e-6)
    # only ignored pixels: zero loss that still back-propagates
    logits.requires_grad_(True)
    loss = ohem_cross_entropy(logits, torch.full_like(target, 255))
    loss.backward()
    assert loss.item() == 0 and logits.grad is not None
